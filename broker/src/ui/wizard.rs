//! The "Add credential" wizard's subject builders: from what an admin knows about a
//! pipeline or a pod (organization, repository, branch; namespace, service account; ...)
//! to the exact issuer and subject, or FFL expression, the platform's tokens will carry
//! (docs/console.md). Pure functions, no I/O; Entra's rules on the result are applied
//! afterwards by [`crate::admin::Admin::check_credential`].
//!
//! Wildcards (`*`, `?`) in a branch, tag, environment or ref name turn the subject into an
//! FFL expression `claims['sub'] matches '...'`, which the broker evaluates for every
//! issuer.

/// GitHub Actions' issuer on github.com.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitLab.com's issuer; self-managed instances use their own URL.
pub const GITLAB_ISSUER: &str = "https://gitlab.com";
/// Azure DevOps service-connection issuers: this prefix and the organization's id.
pub const AZURE_DEVOPS_ISSUER_PREFIX: &str = "https://vstoken.dev.azure.com/";

/// How the credential decides on a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The token's `sub`, compared exactly.
    Subject(String),
    /// An FFL expression (`claimsMatchingExpression`).
    Expression(String),
}

impl Rule {
    /// The subject, or the expression text.
    pub fn text(&self) -> &str {
        match self {
            Rule::Subject(s) | Rule::Expression(s) => s,
        }
    }
}

/// What the wizard produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub issuer: String,
    pub rule: Rule,
}

/// An input the wizard cannot build from, naming the form field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

fn problem(field: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        field,
        message: message.into(),
    }
}

/// What a GitHub Actions job is, in the subject's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitHubEntity {
    Branch,
    Tag,
    Environment,
    PullRequest,
}

impl GitHubEntity {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "branch" => GitHubEntity::Branch,
            "tag" => GitHubEntity::Tag,
            "environment" => GitHubEntity::Environment,
            "pull_request" => GitHubEntity::PullRequest,
            _ => return None,
        })
    }
}

/// A GitHub Actions job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitHub {
    /// Defaults to [`GITHUB_ISSUER`]; GitHub Enterprise Cloud with a custom issuer uses
    /// `.../SLUG`, GitHub Enterprise Server `https://HOST/_services/token`.
    pub issuer: String,
    pub org: String,
    pub repo: String,
    pub entity: String,
    /// Branch, tag or environment name; unused for pull requests.
    pub value: String,
    /// The immutable form `repo:ORG@ORG_ID/REPO@REPO_ID:...`.
    pub immutable_ids: bool,
    pub org_id: String,
    pub repo_id: String,
}

/// A Kubernetes service account (or every one in a namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubernetes {
    /// The cluster's `--service-account-issuer` (AKS issuers end in `/`).
    pub issuer: String,
    pub namespace: String,
    pub service_account: String,
    pub whole_namespace: bool,
}

/// An Azure DevOps service connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureDevOps {
    /// The organization's id (a GUID), which makes the issuer.
    pub org_id: String,
    pub org: String,
    pub project: String,
    pub connection: String,
    /// Instead of the organization id: newer connections use
    /// `https://login.microsoftonline.com/{tenant}/v2.0` (with `/eid1/...` subjects,
    /// which the "other issuer" scenario takes as they are).
    pub issuer: String,
}

/// A GitLab CI job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitLab {
    /// The instance URL; defaults to [`GITLAB_ISSUER`].
    pub issuer: String,
    /// `group/project`, or `group/subgroup/project`.
    pub project_path: String,
    /// `branch` or `tag`.
    pub ref_type: String,
    pub git_ref: String,
}

/// Any other issuer: the subject, or an FFL expression, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Other {
    pub issuer: String,
    /// `subject` or `expression`.
    pub mode: String,
    pub subject: String,
    pub expression: String,
}

/// One of the wizard's scenarios with its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    GitHub(GitHub),
    Kubernetes(Kubernetes),
    AzureDevOps(AzureDevOps),
    GitLab(GitLab),
    Other(Other),
}

/// The scenario keys, in the order the wizard shows them, with their labels.
pub const SCENARIOS: [(&str, &str); 5] = [
    ("github", "GitHub Actions"),
    ("kubernetes", "Kubernetes"),
    ("azure_devops", "Azure DevOps"),
    ("gitlab", "GitLab"),
    ("other", "Other issuer"),
];

impl Scenario {
    /// Reads a scenario from form fields (see the field names in the wizard page).
    /// Identifiers are trimmed; a free-form subject or expression is taken as typed.
    pub fn from_fields<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Scenario, Problem> {
        let text = |name: &str| get(name).map(str::trim).unwrap_or_default().to_owned();
        let raw = |name: &str| get(name).unwrap_or_default().to_owned();
        let flag = |name: &str| matches!(get(name), Some("on" | "true" | "1" | "yes"));
        Ok(match get("scenario").unwrap_or("github") {
            "github" => Scenario::GitHub(GitHub {
                issuer: text("gh_issuer"),
                org: text("gh_org"),
                repo: text("gh_repo"),
                entity: text("gh_entity"),
                value: text("gh_value"),
                immutable_ids: flag("gh_ids"),
                org_id: text("gh_org_id"),
                repo_id: text("gh_repo_id"),
            }),
            "kubernetes" => Scenario::Kubernetes(Kubernetes {
                issuer: text("k8s_issuer"),
                namespace: text("k8s_namespace"),
                service_account: text("k8s_sa"),
                whole_namespace: flag("k8s_all"),
            }),
            "azure_devops" => Scenario::AzureDevOps(AzureDevOps {
                org_id: text("ado_org_id"),
                org: text("ado_org"),
                project: text("ado_project"),
                connection: text("ado_connection"),
                issuer: text("ado_issuer"),
            }),
            "gitlab" => Scenario::GitLab(GitLab {
                issuer: text("gl_issuer"),
                project_path: text("gl_project"),
                ref_type: text("gl_ref_type"),
                git_ref: text("gl_ref"),
            }),
            "other" => Scenario::Other(Other {
                issuer: text("other_issuer"),
                mode: text("other_mode"),
                subject: raw("other_subject"),
                expression: raw("other_expression"),
            }),
            other => {
                return Err(problem(
                    "scenario",
                    format!(
                        "unknown scenario {other:?}; choose one of {}",
                        SCENARIOS.map(|(k, _)| k).join(", ")
                    ),
                ));
            }
        })
    }

    /// The issuer and the subject or expression, or every input that is missing or wrong.
    pub fn build(&self) -> Result<Built, Vec<Problem>> {
        match self {
            Scenario::GitHub(g) => github(g),
            Scenario::Kubernetes(k) => kubernetes(k),
            Scenario::AzureDevOps(a) => azure_devops(a),
            Scenario::GitLab(g) => gitlab(g),
            Scenario::Other(o) => other(o),
        }
    }
}

/// An FFL string literal: single quotes, a quote inside doubled.
pub fn ffl_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `claims['sub'] matches 'PATTERN'`.
pub fn sub_matches(pattern: &str) -> String {
    format!("claims['sub'] matches {}", ffl_quote(pattern))
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// A subject, or an expression when the pattern has wildcards.
fn subject_or_pattern(subject: String) -> Rule {
    if has_wildcard(&subject) {
        Rule::Expression(sub_matches(&subject))
    } else {
        Rule::Subject(subject)
    }
}

fn required(value: &str, field: &'static str, what: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        out.push(problem(field, format!("{what} is required")));
    }
}

/// GitHub owner and repository names: letters, digits, `-`, `_` and `.`.
fn check_github_name(value: &str, field: &'static str, what: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        out.push(problem(field, format!("{what} is required")));
    } else if value.contains('/') {
        out.push(problem(
            field,
            format!("{what} {value:?} contains '/'; give the organization and the repository in their own fields"),
        ));
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        out.push(problem(
            field,
            format!("{what} {value:?} may contain only letters, digits, '-', '_' and '.'"),
        ));
    }
}

fn check_digits(value: &str, field: &'static str, what: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        out.push(problem(
            field,
            format!("{what} is required for the immutable form"),
        ));
    } else if !value.bytes().all(|b| b.is_ascii_digit()) {
        out.push(problem(
            field,
            format!("{what} {value:?} must be a number (the id GitHub shows in the API)"),
        ));
    }
}

/// `repo:ORG/REPO:ref:refs/heads/BR`, `...:ref:refs/tags/T`, `...:environment:ENV`,
/// `...:pull_request`; with immutable ids `repo:ORG@ID/REPO@ID:...`.
pub fn github(g: &GitHub) -> Result<Built, Vec<Problem>> {
    let mut out = Vec::new();
    check_github_name(&g.org, "gh_org", "the organization", &mut out);
    check_github_name(&g.repo, "gh_repo", "the repository", &mut out);
    if g.immutable_ids {
        check_digits(&g.org_id, "gh_org_id", "the organization id", &mut out);
        check_digits(&g.repo_id, "gh_repo_id", "the repository id", &mut out);
    }
    let entity = GitHubEntity::parse(&g.entity);
    let tail = match entity {
        None => {
            out.push(problem(
                "gh_entity",
                "choose what runs the job: branch, tag, environment or pull request",
            ));
            String::new()
        }
        Some(GitHubEntity::PullRequest) => "pull_request".to_owned(),
        Some(GitHubEntity::Branch) => {
            let branch = g.value.strip_prefix("refs/heads/").unwrap_or(&g.value);
            required(branch, "gh_value", "the branch", &mut out);
            format!("ref:refs/heads/{branch}")
        }
        Some(GitHubEntity::Tag) => {
            let tag = g.value.strip_prefix("refs/tags/").unwrap_or(&g.value);
            required(tag, "gh_value", "the tag", &mut out);
            format!("ref:refs/tags/{tag}")
        }
        Some(GitHubEntity::Environment) => {
            required(&g.value, "gh_value", "the environment", &mut out);
            format!("environment:{}", g.value)
        }
    };
    if !out.is_empty() {
        return Err(out);
    }
    let repo = if g.immutable_ids {
        format!("{}@{}/{}@{}", g.org, g.org_id, g.repo, g.repo_id)
    } else {
        format!("{}/{}", g.org, g.repo)
    };
    Ok(Built {
        issuer: or_default(&g.issuer, GITHUB_ISSUER),
        rule: subject_or_pattern(format!("repo:{repo}:{tail}")),
    })
}

fn or_default(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value.to_owned()
    }
}

/// A DNS label as Kubernetes names namespaces: lower-case letters, digits and `-`,
/// starting and ending with a letter or digit, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain (service account names): DNS labels joined by `.`, at most 253.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `system:serviceaccount:NS:SA`, or for the whole namespace
/// `claims['sub'] matches 'system:serviceaccount:NS:*'`.
pub fn kubernetes(k: &Kubernetes) -> Result<Built, Vec<Problem>> {
    let mut out = Vec::new();
    required(
        &k.issuer,
        "k8s_issuer",
        "the cluster's issuer URL (its --service-account-issuer)",
        &mut out,
    );
    if k.namespace.is_empty() {
        out.push(problem("k8s_namespace", "the namespace is required"));
    } else if !is_dns_label(&k.namespace) {
        out.push(problem(
            "k8s_namespace",
            format!("namespace {:?} is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)", k.namespace),
        ));
    }
    if !k.whole_namespace {
        if k.service_account.is_empty() {
            out.push(problem(
                "k8s_sa",
                "the service account is required (or allow every service account in the namespace)",
            ));
        } else if !is_dns_subdomain(&k.service_account) {
            out.push(problem(
                "k8s_sa",
                format!("service account {:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')", k.service_account),
            ));
        }
    }
    if !out.is_empty() {
        return Err(out);
    }
    let rule = if k.whole_namespace {
        Rule::Expression(sub_matches(&format!(
            "system:serviceaccount:{}:*",
            k.namespace
        )))
    } else {
        Rule::Subject(format!(
            "system:serviceaccount:{}:{}",
            k.namespace, k.service_account
        ))
    };
    Ok(Built {
        issuer: k.issuer.clone(),
        rule,
    })
}

fn check_ado_name(value: &str, field: &'static str, what: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        out.push(problem(field, format!("{what} is required")));
    } else if value.contains('/') || value.chars().any(char::is_control) {
        out.push(problem(
            field,
            format!("{what} {value:?} must not contain '/' or control characters"),
        ));
    }
}

/// Issuer `https://vstoken.dev.azure.com/{org-guid}`, subject `sc://ORG/PROJECT/CONNECTION`.
///
/// Only that issuer's tokens carry `sc://` subjects: connections whose issuer is
/// `https://login.microsoftonline.com/{tenant}/v2.0` use `/eid1/...` subjects, so another
/// issuer is refused here and belongs in "Other issuer".
pub fn azure_devops(a: &AzureDevOps) -> Result<Built, Vec<Problem>> {
    let mut out = Vec::new();
    let issuer = if !a.issuer.is_empty() {
        let guid = a.issuer.strip_prefix(AZURE_DEVOPS_ISSUER_PREFIX);
        if guid.is_some_and(crate::policy::rules::is_guid) {
            a.issuer.clone()
        } else {
            out.push(problem(
                "ado_issuer",
                format!(
                    "issuer {:?} is not {AZURE_DEVOPS_ISSUER_PREFIX}{{org-guid}}: only that issuer's tokens carry sc://ORG/PROJECT/CONNECTION subjects (connections issued by login.microsoftonline.com use /eid1/... subjects); use the \"Other issuer\" scenario with the subject the connection shows",
                    a.issuer
                ),
            ));
            String::new()
        }
    } else if a.org_id.is_empty() {
        out.push(problem(
            "ado_org_id",
            "the organization id (a GUID, in the service connection's details as the issuer) is required",
        ));
        String::new()
    } else if !crate::policy::rules::is_guid(&a.org_id) {
        out.push(problem(
            "ado_org_id",
            format!("organization id {:?} must be a GUID", a.org_id),
        ));
        String::new()
    } else {
        format!(
            "{AZURE_DEVOPS_ISSUER_PREFIX}{}",
            a.org_id.to_ascii_lowercase()
        )
    };
    check_ado_name(&a.org, "ado_org", "the organization", &mut out);
    check_ado_name(&a.project, "ado_project", "the project", &mut out);
    check_ado_name(
        &a.connection,
        "ado_connection",
        "the service connection",
        &mut out,
    );
    if !out.is_empty() {
        return Err(out);
    }
    Ok(Built {
        issuer,
        rule: Rule::Subject(format!("sc://{}/{}/{}", a.org, a.project, a.connection)),
    })
}

/// Issuer the instance URL, subject `project_path:GROUP/PROJECT:ref_type:branch|tag:ref:NAME`.
pub fn gitlab(g: &GitLab) -> Result<Built, Vec<Problem>> {
    let mut out = Vec::new();
    let path = g.project_path.trim_matches('/');
    if path.is_empty() {
        out.push(problem(
            "gl_project",
            "the project path (group/project) is required",
        ));
    } else if !path.contains('/') {
        out.push(problem(
            "gl_project",
            format!("project path {path:?} must include the group: group/project"),
        ));
    } else if path.contains("//") || path.chars().any(|c| c.is_whitespace() || c == ':') {
        out.push(problem(
            "gl_project",
            format!(
                "project path {path:?} must be group/project without spaces, ':' or empty parts"
            ),
        ));
    }
    if !matches!(g.ref_type.as_str(), "branch" | "tag") {
        out.push(problem("gl_ref_type", "the ref type is branch or tag"));
    }
    required(&g.git_ref, "gl_ref", "the branch or tag name", &mut out);
    if !out.is_empty() {
        return Err(out);
    }
    Ok(Built {
        issuer: or_default(&g.issuer, GITLAB_ISSUER),
        rule: subject_or_pattern(format!(
            "project_path:{path}:ref_type:{}:ref:{}",
            g.ref_type, g.git_ref
        )),
    })
}

/// Any issuer: the subject or the expression exactly as typed.
pub fn other(o: &Other) -> Result<Built, Vec<Problem>> {
    let mut out = Vec::new();
    required(&o.issuer, "other_issuer", "the issuer", &mut out);
    let rule = match o.mode.as_str() {
        "expression" => {
            required(
                &o.expression,
                "other_expression",
                "the expression",
                &mut out,
            );
            Rule::Expression(o.expression.clone())
        }
        "subject" | "" => {
            required(&o.subject, "other_subject", "the subject", &mut out);
            Rule::Subject(o.subject.clone())
        }
        _ => {
            out.push(problem("other_mode", "match on a subject or an expression"));
            Rule::Subject(String::new())
        }
    };
    if !out.is_empty() {
        return Err(out);
    }
    Ok(Built {
        issuer: o.issuer.clone(),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ffl::Expression;

    fn gh(entity: &str, value: &str) -> GitHub {
        GitHub {
            org: "contoso".into(),
            repo: "app".into(),
            entity: entity.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    fn subject(built: Result<Built, Vec<Problem>>) -> String {
        match built.unwrap().rule {
            Rule::Subject(s) => s,
            Rule::Expression(e) => panic!("expected a subject, got expression {e}"),
        }
    }

    fn expression(built: Result<Built, Vec<Problem>>) -> String {
        match built.unwrap().rule {
            Rule::Expression(e) => {
                Expression::parse(&e).unwrap();
                e
            }
            Rule::Subject(s) => panic!("expected an expression, got subject {s}"),
        }
    }

    fn fields(built: Result<Built, Vec<Problem>>) -> Vec<&'static str> {
        built.unwrap_err().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn github_subjects_for_each_entity() {
        assert_eq!(
            subject(github(&gh("branch", "main"))),
            "repo:contoso/app:ref:refs/heads/main"
        );
        assert_eq!(
            subject(github(&gh("branch", "refs/heads/main"))),
            "repo:contoso/app:ref:refs/heads/main"
        );
        assert_eq!(
            subject(github(&gh("tag", "v1.2.0"))),
            "repo:contoso/app:ref:refs/tags/v1.2.0"
        );
        assert_eq!(
            subject(github(&gh("environment", "production"))),
            "repo:contoso/app:environment:production"
        );
        assert_eq!(
            subject(github(&gh("pull_request", "ignored"))),
            "repo:contoso/app:pull_request"
        );
        assert_eq!(github(&gh("branch", "main")).unwrap().issuer, GITHUB_ISSUER);
    }

    #[test]
    fn github_immutable_id_form() {
        let g = GitHub {
            immutable_ids: true,
            org_id: "1342004".into(),
            repo_id: "70107786".into(),
            ..gh("branch", "main")
        };
        assert_eq!(
            subject(github(&g)),
            "repo:contoso@1342004/app@70107786:ref:refs/heads/main"
        );
        let bad = GitHub {
            org_id: "contoso".into(),
            repo_id: String::new(),
            ..g
        };
        assert_eq!(fields(github(&bad)), ["gh_org_id", "gh_repo_id"]);
    }

    #[test]
    fn github_wildcards_become_an_expression() {
        assert_eq!(
            expression(github(&gh("branch", "release/*"))),
            "claims['sub'] matches 'repo:contoso/app:ref:refs/heads/release/*'"
        );
    }

    #[test]
    fn github_enterprise_issuers_are_kept() {
        let g = GitHub {
            issuer: "https://ghes.contoso.com/_services/token".into(),
            ..gh("tag", "v1")
        };
        assert_eq!(
            github(&g).unwrap().issuer,
            "https://ghes.contoso.com/_services/token"
        );
    }

    #[test]
    fn github_problems_name_the_fields() {
        let g = GitHub {
            org: "contoso/app".into(),
            repo: String::new(),
            entity: "branch".into(),
            ..Default::default()
        };
        assert_eq!(fields(github(&g)), ["gh_org", "gh_repo", "gh_value"]);
        assert_eq!(fields(github(&gh("commit", "x"))), ["gh_entity"]);
        assert_eq!(
            fields(github(&gh("branch", "main").clone_with_repo("a b"))),
            ["gh_repo"]
        );
    }

    impl GitHub {
        fn clone_with_repo(&self, repo: &str) -> GitHub {
            GitHub {
                repo: repo.into(),
                ..self.clone()
            }
        }
    }

    #[test]
    fn kubernetes_service_account_and_whole_namespace() {
        let k = Kubernetes {
            issuer: "https://westeurope.oic.prod-aks.azure.com/t/c/".into(),
            namespace: "payments".into(),
            service_account: "api".into(),
            whole_namespace: false,
        };
        let built = kubernetes(&k).unwrap();
        assert_eq!(
            built.issuer, "https://westeurope.oic.prod-aks.azure.com/t/c/",
            "the trailing '/' is kept"
        );
        assert_eq!(
            built.rule,
            Rule::Subject("system:serviceaccount:payments:api".into())
        );
        let all = Kubernetes {
            whole_namespace: true,
            service_account: String::new(),
            ..k.clone()
        };
        assert_eq!(
            expression(kubernetes(&all)),
            "claims['sub'] matches 'system:serviceaccount:payments:*'"
        );
        let bad = Kubernetes {
            issuer: String::new(),
            namespace: "Payments".into(),
            service_account: "API".into(),
            whole_namespace: false,
        };
        assert_eq!(
            fields(kubernetes(&bad)),
            ["k8s_issuer", "k8s_namespace", "k8s_sa"]
        );
    }

    #[test]
    fn azure_devops_issuer_from_the_organization_id() {
        let a = AzureDevOps {
            org_id: "5A6B7C8D-9E0F-4A1B-2C3D-4E5F6A7B8C9D".into(),
            org: "contoso".into(),
            project: "web shop".into(),
            connection: "prod-connection".into(),
            issuer: String::new(),
        };
        let built = azure_devops(&a).unwrap();
        assert_eq!(
            built.issuer,
            "https://vstoken.dev.azure.com/5a6b7c8d-9e0f-4a1b-2c3d-4e5f6a7b8c9d"
        );
        assert_eq!(
            built.rule,
            Rule::Subject("sc://contoso/web shop/prod-connection".into())
        );
        // An issuer given instead of the organization id must be vstoken's.
        let given = AzureDevOps {
            org_id: String::new(),
            issuer: "https://vstoken.dev.azure.com/5a6b7c8d-9e0f-4a1b-2c3d-4e5f6a7b8c9d".into(),
            ..a.clone()
        };
        assert_eq!(azure_devops(&given).unwrap().issuer, given.issuer);
        // Entra-issued connection tokens carry /eid1/... subjects, never sc://...
        for issuer in [
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            "https://vstoken.dev.azure.com/not-a-guid",
            "https://example.com/5a6b7c8d-9e0f-4a1b-2c3d-4e5f6a7b8c9d",
        ] {
            let custom = AzureDevOps {
                org_id: String::new(),
                issuer: issuer.into(),
                ..a.clone()
            };
            let problems = azure_devops(&custom).unwrap_err();
            assert_eq!(problems.len(), 1, "{issuer}");
            assert_eq!(problems[0].field, "ado_issuer");
            assert!(problems[0].message.contains("Other issuer"), "{issuer}");
        }
        let bad = AzureDevOps {
            org_id: "not-a-guid".into(),
            project: "a/b".into(),
            ..a
        };
        assert_eq!(fields(azure_devops(&bad)), ["ado_org_id", "ado_project"]);
    }

    #[test]
    fn gitlab_branch_tag_and_wildcards() {
        let g = GitLab {
            issuer: String::new(),
            project_path: "contoso/platform/app".into(),
            ref_type: "branch".into(),
            git_ref: "main".into(),
        };
        let built = gitlab(&g).unwrap();
        assert_eq!(built.issuer, GITLAB_ISSUER);
        assert_eq!(
            built.rule,
            Rule::Subject("project_path:contoso/platform/app:ref_type:branch:ref:main".into())
        );
        let tags = GitLab {
            issuer: "https://gitlab.contoso.com".into(),
            ref_type: "tag".into(),
            git_ref: "v*".into(),
            ..g.clone()
        };
        let built = gitlab(&tags).unwrap();
        assert_eq!(built.issuer, "https://gitlab.contoso.com");
        assert_eq!(
            built.rule,
            Rule::Expression(
                "claims['sub'] matches 'project_path:contoso/platform/app:ref_type:tag:ref:v*'"
                    .into()
            )
        );
        let bad = GitLab {
            project_path: "app".into(),
            ref_type: "commit".into(),
            git_ref: String::new(),
            ..g
        };
        assert_eq!(
            fields(gitlab(&bad)),
            ["gl_project", "gl_ref_type", "gl_ref"]
        );
    }

    #[test]
    fn other_issuers_take_the_subject_or_expression_as_typed() {
        let o = Other {
            issuer: "https://app.terraform.io".into(),
            mode: "subject".into(),
            subject: "organization:O:project:P:workspace:W:run_phase:apply".into(),
            expression: String::new(),
        };
        assert_eq!(other(&o).unwrap().rule, Rule::Subject(o.subject.clone()));
        let e = Other {
            mode: "expression".into(),
            expression: "claims['sub'] matches 'organization:O:*'".into(),
            ..o.clone()
        };
        assert_eq!(
            other(&e).unwrap().rule,
            Rule::Expression(e.expression.clone())
        );
        let spaced = Other {
            subject: " x ".into(),
            ..o
        };
        assert_eq!(
            other(&spaced).unwrap().rule,
            Rule::Subject(" x ".into()),
            "not trimmed: Entra's rules report it"
        );
        assert_eq!(
            fields(other(&Other::default())),
            ["other_issuer", "other_subject"]
        );
    }

    #[test]
    fn quotes_in_values_are_doubled_in_expressions() {
        assert_eq!(ffl_quote("it's"), "'it''s'");
        let g = gh("branch", "o'brien/*");
        assert_eq!(
            expression(github(&g)),
            "claims['sub'] matches 'repo:contoso/app:ref:refs/heads/o''brien/*'"
        );
    }

    #[test]
    fn scenarios_are_read_from_form_fields() {
        let form = [
            ("scenario", "github"),
            ("gh_org", " contoso "),
            ("gh_repo", "app"),
            ("gh_entity", "environment"),
            ("gh_value", "prod"),
            ("gh_ids", "on"),
        ];
        let get = |name: &str| form.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let Scenario::GitHub(g) = Scenario::from_fields(get).unwrap() else {
            panic!("not github");
        };
        assert_eq!(g.org, "contoso");
        assert!(g.immutable_ids);
        assert_eq!(
            Scenario::from_fields(|_| Some("nope")).unwrap_err().field,
            "scenario"
        );
    }
}
