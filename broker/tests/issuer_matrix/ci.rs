//! CI issuers: GitHub Actions (github.com, an enterprise's issuer, GitHub Enterprise
//! Server), Azure DevOps (its own issuer and Entra's), GitLab (gitlab.com and
//! self-managed) and HCP Terraform / Terraform Enterprise.

use serde_json::{Value, json};
use wif_broker::dev::jwt::KeyKind;

use crate::farm::*;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const MAIN: &str = "repo:contoso/app:ref:refs/heads/main";
const TAG: &str = "repo:contoso/app:ref:refs/tags/v1.2.0";
const PRODUCTION: &str = "repo:contoso/app:environment:production";

/// A GitHub Actions token for a push to main of contoso/app, as GitHub documents it:
/// string ids, `nbf` ten minutes before `iat`, five minutes of life, a `jti`.
fn github_claims(iss: &str, sub: &str, aud: &str) -> Value {
    let iat = now();
    json!({
        "jti": format!("{:032x}", iat as u128 * 7919 + sub.len() as u128),
        "sub": sub,
        "aud": aud,
        "ref": "refs/heads/main",
        "sha": "d3b07384d113edec49eaa6238ad5ff00c86c1f2d",
        "repository": "contoso/app",
        "repository_owner": "contoso",
        "repository_owner_id": "1234567",
        "run_id": "5882151744",
        "run_number": "42",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": "7654321",
        "actor_id": "583231",
        "actor": "octocat",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": "contoso/app/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "d3b07384d113edec49eaa6238ad5ff00c86c1f2d",
        "job_workflow_ref": "contoso/workflows/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "0ee6b2d3f3e5e4e1b2e0c5a6c8a1f6b2f1a0c9d8",
        "runner_environment": "github-hosted",
        "iss": iss,
        "nbf": iat - 600,
        "exp": iat + 300,
        "iat": iat,
    })
}

fn github_issuer(iss: &str) -> Issuer {
    let base = iss.trim_end_matches('/');
    Issuer::new(
        iss,
        &format!("{base}/.well-known/jwks"),
        &[KeyKind::Rsa2048],
        Header::KidTypX5t,
        JwkStyle::WithAlg,
    )
}

#[tokio::test]
async fn github_com_default_immutable_and_customised_subjects() {
    let github = github_issuer(GITHUB);
    let immutable = "repo:contoso@1234567/app@7654321:ref:refs/heads/main";
    let repo_template = "repo:contoso/app:environment:production:job_workflow_ref:\
                         contoso/workflows/.github/workflows/deploy.yml@refs/heads/main";
    let owner_template = "repository_owner_id:1234567:environment:production";
    let m = Matrix::start(
        Farm::start(&[&github], &[]).await,
        &[
            Identity {
                name: "gh-default",
                credentials: vec![
                    Cred::subject("main", GITHUB, MAIN),
                    Cred::subject("release-tags", GITHUB, TAG),
                    Cred::subject("production", GITHUB, PRODUCTION),
                ],
            },
            Identity {
                name: "gh-immutable",
                credentials: vec![Cred::subject("immutable-main", GITHUB, immutable)],
            },
            Identity {
                name: "gh-repo-template",
                credentials: vec![Cred::subject("production", GITHUB, repo_template)],
            },
            Identity {
                name: "gh-owner-template",
                credentials: vec![Cred::expression(
                    "owner-production",
                    GITHUB,
                    "claims['sub'] matches 'repository_owner_id:1234567:*' and \
                     claims['job_workflow_ref'] matches 'contoso/workflows/.github/workflows/*@refs/heads/main'",
                )],
            },
        ],
        "",
    )
    .await;

    m.admits(
        &github.mint(&github_claims(GITHUB, MAIN, EXCHANGE_AUDIENCE)),
        "gh-default",
    )
    .await;
    // A tag push, and a job in an environment (whose subject names no ref).
    let mut tag = github_claims(GITHUB, TAG, EXCHANGE_AUDIENCE);
    tag["ref"] = json!("refs/tags/v1.2.0");
    tag["ref_type"] = json!("tag");
    m.admits(&github.mint(&tag), "gh-default").await;
    let mut environment = github_claims(GITHUB, PRODUCTION, EXCHANGE_AUDIENCE);
    environment["environment"] = json!("production");
    m.admits(&github.mint(&environment), "gh-default").await;
    m.admits(
        &github.mint(&github_claims(GITHUB, immutable, EXCHANGE_AUDIENCE)),
        "gh-immutable",
    )
    .await;
    let mut production = github_claims(GITHUB, repo_template, EXCHANGE_AUDIENCE);
    production["environment"] = json!("production");
    m.admits(&github.mint(&production), "gh-repo-template")
        .await;
    production["sub"] = json!(owner_template);
    m.admits(&github.mint(&production), "gh-owner-template")
        .await;
    // The keys were found through discovery at GitHub's documented paths, once.
    assert_eq!(
        m.farm.asked(),
        [
            format!("{GITHUB}/.well-known/openid-configuration"),
            format!("{GITHUB}/.well-known/jwks"),
        ]
    );

    // Another branch; a recycled owner name (another owner id); an owner template whose
    // reusable workflow comes from a branch.
    let feature = "repo:contoso/app:ref:refs/heads/feature";
    let recycled = "repo:contoso@9999999/app@7654321:ref:refs/heads/main";
    let pull_request = "repo:contoso/app:pull_request";
    let staging = "repo:contoso/app:environment:staging";
    for sub in [feature, recycled, pull_request, staging] {
        let token = github.mint(&github_claims(GITHUB, sub, EXCHANGE_AUDIENCE));
        m.refuses(&token, 403, "no_matching_credential", NO_MATCH)
            .await;
    }
    production["job_workflow_ref"] =
        json!("contoso/workflows/.github/workflows/deploy.yml@refs/heads/feature");
    m.refuses(
        &github.mint(&production),
        403,
        "no_matching_credential",
        NO_MATCH,
    )
    .await;
    // GitHub's default audience is the owner's URL; the credential expects Entra's.
    let default_aud = github.mint(&github_claims(GITHUB, MAIN, "https://github.com/contoso"));
    m.refuses(&default_aud, 401, "invalid_audience", EXCHANGE_AUDIENCE)
        .await;

    m.refuses_near_misses(
        &github,
        &github_claims(GITHUB, MAIN, EXCHANGE_AUDIENCE),
        &[
            "https://token.actions.githubusercontent.com/",
            "https://Token.Actions.GitHubUserContent.com",
            "https://token.actions.githubusercontent.com:443",
            "http://token.actions.githubusercontent.com",
            "https://token.actions.githubusercontent.com/contoso",
        ],
    )
    .await;
}

#[tokio::test]
async fn github_enterprise_issuer_and_enterprise_server() {
    let enterprise_iss = "https://token.actions.githubusercontent.com/contoso-ent";
    let ghes_iss = "https://ghes.contoso.example/_services/token";
    let enterprise = github_issuer(enterprise_iss);
    let ghes = github_issuer(ghes_iss);
    let m = Matrix::start(
        Farm::start(&[&enterprise, &ghes], &[]).await,
        &[
            Identity {
                name: "gh-enterprise",
                credentials: vec![Cred::subject("main", enterprise_iss, MAIN)],
            },
            Identity {
                name: "ghes",
                credentials: vec![Cred::subject("main", ghes_iss, MAIN)],
            },
        ],
        "",
    )
    .await;

    let mut claims = github_claims(enterprise_iss, MAIN, EXCHANGE_AUDIENCE);
    claims["enterprise"] = json!("contoso-ent");
    claims["enterprise_id"] = json!("4711");
    m.admits(&enterprise.mint(&claims), "gh-enterprise").await;
    m.admits(
        &ghes.mint(&github_claims(ghes_iss, MAIN, EXCHANGE_AUDIENCE)),
        "ghes",
    )
    .await;
    let asked = m.farm.asked();
    for path in [
        format!("{enterprise_iss}/.well-known/openid-configuration"),
        format!("{enterprise_iss}/.well-known/jwks"),
        format!("{ghes_iss}/.well-known/openid-configuration"),
        format!("{ghes_iss}/.well-known/jwks"),
    ] {
        assert!(asked.contains(&path), "{path} not fetched: {asked:?}");
    }

    let other = ghes.mint(&github_claims(
        ghes_iss,
        "repo:contoso/app:pull_request",
        EXCHANGE_AUDIENCE,
    ));
    m.refuses(&other, 403, "no_matching_credential", NO_MATCH)
        .await;

    // github.com's own issuer is another issuer than the enterprise's.
    m.refuses_near_misses(
        &enterprise,
        &claims,
        &[
            GITHUB,
            "https://token.actions.githubusercontent.com/contoso-ent/",
            "https://token.actions.githubusercontent.com/Contoso-Ent",
        ],
    )
    .await;
    m.refuses_near_misses(
        &ghes,
        &github_claims(ghes_iss, MAIN, EXCHANGE_AUDIENCE),
        &[
            "https://ghes.contoso.example/_services/token/",
            "https://ghes.contoso.example",
            "https://GHES.contoso.example/_services/token",
        ],
    )
    .await;
}

const ADO_ORG: &str = "0ca3ddd9-f0b0-4635-a98c-5866526961b6";
/// Azure DevOps' first-party application, the `azp` of its tokens issued by Entra.
const ADO_APP: &str = "499b84ac-1321-427f-aa17-267ca6975798";

/// A token Azure DevOps' own issuer signs for a service connection.
fn vstoken_claims(iss: &str, sub: &str) -> Value {
    let iat = now();
    json!({
        "jti": format!("90b75b0a-61b6-4b71-ba6f-{:012x}", iat),
        "sub": sub,
        "aud": EXCHANGE_AUDIENCE,
        "iss": iss,
        "nbf": iat - 600,
        "exp": iat + 299,
        "iat": iat,
    })
}

/// A token Entra signs for an Azure DevOps service connection: `aud` is the token-exchange
/// app's id, the subject names tenant, app, organization and connection, and there is no
/// `jti`. It lives a day.
fn ado_entra_claims(iss: &str, connection: &str) -> Value {
    let iat = now();
    json!({
        "aud": "fb60f99c-7a34-4190-8149-302f77469936",
        "iss": iss,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 86_700,
        "aio": "k2RgYFhfymJ2bqHRXNnP7EUL3urKJkfIGcb/EQ56GHzymVNEx00A",
        "azp": ADO_APP,
        "azpacr": "2",
        "idtyp": "app",
        "oid": "9246576b-c9b6-441d-a0ca-796721fd971e",
        "rh": "1.AQQAMiSI_7AJe0O9IsoTwAN97Zz5YPs0epBBgUkwL3dGmTYEAQAEAA.",
        "sub": format!("/eid1/c/pub/t/v4j5cvGGr0GRqy180BHbRw/a/rISbSSETf0KqFyZ8ppdXmA/sc/{ADO_ORG}/{connection}"),
        "tid": TENANT,
        "uti": "A3HaoRGwyEWyU-iJcDEFAA",
        "ver": "2.0",
        "xms_ficinfo": "CAAQARgAIAA",
        "xms_idrel": "7 30",
    })
}

/// Entra's issuer for a tenant: v2.0 discovery, keys under `/discovery/v2.0/keys`.
pub fn entra_issuer(tenant: &str) -> Issuer {
    Issuer::new(
        &format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        &format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"),
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::Entra,
    )
}

#[tokio::test]
async fn azure_devops_service_connections_from_its_issuer_and_from_entra() {
    let vstoken_iss = format!("https://vstoken.dev.azure.com/{ADO_ORG}");
    // The organization's discovery document points at keys shared by every organization.
    let vstoken = Issuer::new(
        &vstoken_iss,
        "https://vstoken.dev.azure.com/.well-known/jwks",
        &[KeyKind::Rsa2048],
        Header::KidTypX5t,
        JwkStyle::WithAlg,
    );
    let entra = entra_issuer(TENANT);
    let connection = "64171687-7a59-4fce-b2c8-823278dcf176";
    let eid1 = ado_entra_claims(&entra.iss, connection)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = Matrix::start(
        Farm::start(&[&vstoken, &entra], &[]).await,
        &[
            Identity {
                name: "ado",
                credentials: vec![Cred::subject(
                    "prod-connection",
                    &vstoken_iss,
                    "sc://contoso/web/prod-connection",
                )],
            },
            Identity {
                name: "ado-entra",
                // The default audience, api://AzureADTokenExchange, as in Entra.
                credentials: vec![Cred::subject("prod-connection", &entra.iss, &eid1)],
            },
        ],
        "",
    )
    .await;

    m.admits(
        &vstoken.mint(&vstoken_claims(
            &vstoken_iss,
            "sc://contoso/web/prod-connection",
        )),
        "ado",
    )
    .await;
    m.admits(
        &entra.mint(&ado_entra_claims(&entra.iss, connection)),
        "ado-entra",
    )
    .await;
    assert!(
        m.farm
            .asked()
            .contains(&"https://vstoken.dev.azure.com/.well-known/jwks".to_owned())
    );

    let test_connection = vstoken.mint(&vstoken_claims(
        &vstoken_iss,
        "sc://contoso/web/test-connection",
    ));
    m.refuses(&test_connection, 403, "no_matching_credential", NO_MATCH)
        .await;
    let other = entra.mint(&ado_entra_claims(
        &entra.iss,
        "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
    ));
    m.refuses(&other, 403, "no_matching_credential", NO_MATCH)
        .await;

    m.refuses_near_misses(
        &vstoken,
        &vstoken_claims(&vstoken_iss, "sc://contoso/web/prod-connection"),
        &[
            format!("{vstoken_iss}/").as_str(),
            format!("https://vstoken.dev.azure.com/{}", ADO_ORG.to_uppercase()).as_str(),
            "https://vstoken.dev.azure.com",
        ],
    )
    .await;
    m.refuses_near_misses(
        &entra,
        &ado_entra_claims(&entra.iss, connection),
        &[
            format!("{}/", entra.iss).as_str(),
            format!("https://login.microsoftonline.com/{TENANT}").as_str(),
            format!("https://sts.windows.net/{TENANT}/").as_str(),
        ],
    )
    .await;
}

/// A GitLab CI ID token, as GitLab documents it: string ids, `nbf` five seconds before
/// `iat`, an hour of life.
fn gitlab_claims(iss: &str, ref_type: &str, git_ref: &str) -> Value {
    let iat = now();
    json!({
        "namespace_id": "72",
        "namespace_path": "contoso",
        "project_id": "20",
        "project_path": "contoso/app",
        "user_id": "1",
        "user_login": "sidney_jones",
        "user_email": "sidney_jones@contoso.example",
        "user_access_level": "owner",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": git_ref,
        "ref_type": ref_type,
        "ref_path": if ref_type == "tag" { format!("refs/tags/{git_ref}") } else { format!("refs/heads/{git_ref}") },
        "ref_protected": "true",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.com/contoso/app//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "jti": format!("235b3a54-b797-45c7-ae9a-{:012x}", iat),
        "iss": iss,
        "iat": iat,
        "nbf": iat - 5,
        "exp": iat + 3600,
        "sub": format!("project_path:contoso/app:ref_type:{ref_type}:ref:{git_ref}"),
        "aud": EXCHANGE_AUDIENCE,
    })
}

#[tokio::test]
async fn gitlab_com_and_a_self_managed_instance_on_its_own_port() {
    let gitlab = Issuer::new(
        "https://gitlab.com",
        "https://gitlab.com/oauth/discovery/keys",
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let self_managed_iss = "https://gitlab.contoso.example:8443";
    let self_managed = Issuer::new(
        self_managed_iss,
        "https://gitlab.contoso.example:8443/oauth/discovery/keys",
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let m = Matrix::start(
        Farm::start(&[&gitlab, &self_managed], &[]).await,
        &[
            Identity {
                name: "gitlab",
                credentials: vec![Cred::expression(
                    "branches",
                    "https://gitlab.com",
                    "claims['sub'] matches 'project_path:contoso/app:ref_type:branch:ref:*'",
                )],
            },
            Identity {
                name: "gitlab-self-managed",
                credentials: vec![Cred::subject(
                    "release-tag",
                    self_managed_iss,
                    "project_path:contoso/app:ref_type:tag:ref:v1.2.0",
                )],
            },
        ],
        "",
    )
    .await;

    m.admits(
        &gitlab.mint(&gitlab_claims("https://gitlab.com", "branch", "main")),
        "gitlab",
    )
    .await;
    m.admits(
        &self_managed.mint(&gitlab_claims(self_managed_iss, "tag", "v1.2.0")),
        "gitlab-self-managed",
    )
    .await;
    assert!(
        m.proxy
            .connects()
            .contains(&"gitlab.contoso.example:8443".to_owned())
    );

    let tag = gitlab.mint(&gitlab_claims("https://gitlab.com", "tag", "v1.2.0"));
    m.refuses(&tag, 403, "no_matching_credential", NO_MATCH)
        .await;
    let branch = self_managed.mint(&gitlab_claims(self_managed_iss, "branch", "v1.2.0"));
    m.refuses(&branch, 403, "no_matching_credential", NO_MATCH)
        .await;

    m.refuses_near_misses(
        &gitlab,
        &gitlab_claims("https://gitlab.com", "branch", "main"),
        &[
            "https://gitlab.com/",
            "https://GitLab.com",
            "https://www.gitlab.com",
        ],
    )
    .await;
    m.refuses_near_misses(
        &self_managed,
        &gitlab_claims(self_managed_iss, "tag", "v1.2.0"),
        &[
            "https://gitlab.contoso.example",
            "https://gitlab.contoso.example:8443/",
            "https://gitlab.contoso.example:443",
        ],
    )
    .await;
}

/// An HCP Terraform workload identity token for one run phase; project names may hold
/// spaces, and the subject carries them as they are.
fn terraform_claims(iss: &str, phase: &str) -> Value {
    let iat = now();
    json!({
        "jti": format!("1192426d-b525-4fde-9d42-{:012x}", iat),
        "iss": iss,
        "aud": EXCHANGE_AUDIENCE,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 7200,
        "sub": format!("organization:contoso:project:Default Project:workspace:networking:run_phase:{phase}"),
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "contoso",
        "terraform_project_id": "prj-vegSA59s1XPwMr2t",
        "terraform_project_name": "Default Project",
        "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm",
        "terraform_workspace_name": "networking",
        "terraform_full_workspace": "organization:contoso:project:Default Project:workspace:networking",
        "terraform_run_id": "run-X3n1AUXNGWbfECsJ",
        "terraform_run_phase": phase,
    })
}

#[tokio::test]
async fn terraform_cloud_and_enterprise_apply_and_plan_phases() {
    let tfc_iss = "https://app.terraform.io";
    let tfe_iss = "https://tfe.contoso.example";
    let tfc = Issuer::new(
        tfc_iss,
        "https://app.terraform.io/.well-known/jwks",
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let tfe = Issuer::new(
        tfe_iss,
        "https://tfe.contoso.example/.well-known/jwks",
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let m = Matrix::start(
        Farm::start(&[&tfc, &tfe], &[]).await,
        &[
            Identity {
                name: "tfc-apply",
                credentials: vec![Cred::subject(
                    "networking-apply",
                    tfc_iss,
                    "organization:contoso:project:Default Project:workspace:networking:run_phase:apply",
                )],
            },
            Identity {
                name: "tfe-plan",
                credentials: vec![Cred::expression(
                    "networking-plan",
                    tfe_iss,
                    "claims['sub'] matches 'organization:contoso:project:*:workspace:networking:run_phase:*' \
                     and claims['terraform_run_phase'] eq 'plan'",
                )],
            },
        ],
        "",
    )
    .await;

    m.admits(&tfc.mint(&terraform_claims(tfc_iss, "apply")), "tfc-apply")
        .await;
    m.admits(&tfe.mint(&terraform_claims(tfe_iss, "plan")), "tfe-plan")
        .await;

    m.refuses(
        &tfc.mint(&terraform_claims(tfc_iss, "plan")),
        403,
        "no_matching_credential",
        NO_MATCH,
    )
    .await;
    m.refuses(
        &tfe.mint(&terraform_claims(tfe_iss, "apply")),
        403,
        "no_matching_credential",
        NO_MATCH,
    )
    .await;

    m.refuses_near_misses(
        &tfc,
        &terraform_claims(tfc_iss, "apply"),
        &[
            "https://app.terraform.io/",
            "https://APP.terraform.io",
            "https://terraform.io",
        ],
    )
    .await;
}
