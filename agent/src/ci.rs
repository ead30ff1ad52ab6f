//! External tokens from the CI platform the job runs on: GitHub Actions and
//! Azure Pipelines hand out a fresh OIDC token on request for the whole run, GitLab puts it
//! in a variable. Each source asks again for every exchange, so a job running for hours
//! never presents an expired assertion (AADSTS700024).
//!
//! Never logged, never put in an error: the tokens, and the bearer the job uses to ask for
//! them (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`, `SYSTEM_ACCESSTOKEN`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::source::{FileSource, MAX_TOKEN_BYTES, SourceError, TokenSource};

/// The audience Entra expects in a federated assertion.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The Azure DevOps REST API version of the OIDC token endpoint.
pub const AZURE_PIPELINES_API_VERSION: &str = "7.1";

/// Variables naming the Azure Pipelines service connection, in the order they are read.
pub const SERVICE_CONNECTION_VARS: &[&str] =
    &["AZURE_SERVICE_CONNECTION_ID", "WIF_SERVICE_CONNECTION_ID"];
/// Variable naming the GitLab `id_tokens` variable that holds the token.
pub const GITLAB_VARIABLE_VAR: &str = "WIF_GITLAB_TOKEN_VARIABLE";

fn http_client(timeout: Duration) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wif-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SourceError::Ci(format!("cannot build the HTTP client: {e}")))
}

/// Reads a CI answer: a 200 with a JSON body, else an error naming the platform and the
/// status (the error body is cut short and never holds a token).
async fn answer<T: for<'de> Deserialize<'de>>(
    platform: &str,
    result: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, SourceError> {
    let response = result.map_err(|e| {
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "connection failed".to_owned()
        } else {
            // Without the URL: GitHub's request URL is not secret, but keep errors short.
            e.without_url().to_string()
        };
        SourceError::Ci(format!("{platform}: {why}"))
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| SourceError::Ci(format!("{platform}: {}", e.without_url())))?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let hint = match status.as_u16() {
            401 | 403 => {
                " (is the request bearer right, and the job allowed to ask for OIDC tokens?)"
            }
            _ => "",
        };
        return Err(SourceError::Ci(format!(
            "{platform} answered HTTP {}{hint}: {}",
            status.as_u16(),
            text.trim()
        )));
    }
    if body.len() > MAX_TOKEN_BYTES {
        return Err(SourceError::Ci(format!(
            "{platform}: answer larger than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| SourceError::Ci(format!("{platform}: unexpected answer: {e}")))
}

fn non_empty(platform: &str, token: String) -> Result<String, SourceError> {
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(SourceError::Ci(format!("{platform} gave an empty token")));
    }
    Ok(token)
}

/// GitHub Actions: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=A` with the request bearer.
pub struct GitHubActions {
    pub request_url: String,
    pub request_token: String,
    pub audience: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitHubActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubActions")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl GitHubActions {
    pub fn new(
        request_url: String,
        request_token: String,
        audience: String,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        url::Url::parse(&request_url)
            .map_err(|_| SourceError::Ci("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL".to_owned()))?;
        Ok(Self {
            request_url,
            request_token,
            audience,
            http: http_client(timeout)?,
        })
    }

    /// The request URL with `audience` added to the query it already has.
    pub fn url(&self) -> Result<url::Url, SourceError> {
        let mut url = url::Url::parse(&self.request_url)
            .map_err(|_| SourceError::Ci("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL".to_owned()))?;
        url.query_pairs_mut()
            .append_pair("audience", &self.audience);
        Ok(url)
    }
}

#[derive(Deserialize)]
struct GitHubAnswer {
    value: String,
}

#[async_trait::async_trait]
impl TokenSource for GitHubActions {
    async fn token(&self) -> Result<String, SourceError> {
        let sent = self
            .http
            .get(self.url()?)
            .bearer_auth(&self.request_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let answer: GitHubAnswer = answer("GitHub Actions", sent).await?;
        non_empty("GitHub Actions", answer.value)
    }

    fn describe(&self) -> String {
        format!("GitHub Actions OIDC (audience {})", self.audience)
    }
}

/// Azure Pipelines: `POST $SYSTEM_OIDCREQUESTURI?api-version=7.1&serviceConnectionId=ID` with
/// `SYSTEM_ACCESSTOKEN` as bearer. Its tokens always carry `api://AzureADTokenExchange`:
/// there is no audience to ask for.
pub struct AzurePipelines {
    pub request_uri: String,
    pub access_token: String,
    pub service_connection_id: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AzurePipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzurePipelines")
            .field("service_connection_id", &self.service_connection_id)
            .finish_non_exhaustive()
    }
}

impl AzurePipelines {
    pub fn new(
        request_uri: String,
        access_token: String,
        service_connection_id: String,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        url::Url::parse(&request_uri)
            .map_err(|_| SourceError::Ci("SYSTEM_OIDCREQUESTURI is not a URL".to_owned()))?;
        Ok(Self {
            request_uri,
            access_token,
            service_connection_id,
            http: http_client(timeout)?,
        })
    }

    pub fn url(&self) -> Result<url::Url, SourceError> {
        let mut url = url::Url::parse(&self.request_uri)
            .map_err(|_| SourceError::Ci("SYSTEM_OIDCREQUESTURI is not a URL".to_owned()))?;
        url.query_pairs_mut()
            .append_pair("api-version", AZURE_PIPELINES_API_VERSION)
            .append_pair("serviceConnectionId", &self.service_connection_id);
        Ok(url)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzurePipelinesAnswer {
    oidc_token: String,
}

#[async_trait::async_trait]
impl TokenSource for AzurePipelines {
    async fn token(&self) -> Result<String, SourceError> {
        let sent = self
            .http
            .post(self.url()?)
            .bearer_auth(&self.access_token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await;
        let answer: AzurePipelinesAnswer = answer("Azure Pipelines", sent).await?;
        non_empty("Azure Pipelines", answer.oidc_token)
    }

    fn describe(&self) -> String {
        format!(
            "Azure Pipelines OIDC (service connection {})",
            self.service_connection_id
        )
    }
}

/// GitLab CI: the job's `id_tokens` put the token in a variable; read it every time.
#[derive(Debug, Clone)]
pub struct GitLab {
    pub variable: String,
}

#[async_trait::async_trait]
impl TokenSource for GitLab {
    async fn token(&self) -> Result<String, SourceError> {
        let value = std::env::var(&self.variable).map_err(|_| {
            SourceError::Ci(format!(
                "the variable {} is not set (declare it under the job's id_tokens)",
                self.variable
            ))
        })?;
        non_empty("GitLab", value)
    }

    fn describe(&self) -> String {
        format!("GitLab id_tokens variable {}", self.variable)
    }
}

/// What the command line says about the CI source; the rest comes from the environment.
#[derive(Debug, Clone, Default)]
pub struct CiOptions {
    /// Audience to ask GitHub for; default [`DEFAULT_AUDIENCE`].
    pub audience: Option<String>,
    pub service_connection: Option<String>,
    pub gitlab_variable: Option<String>,
    /// An explicit token file (`--token-file`): wins over detection.
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// Why no CI source could be chosen.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct DetectError(pub String);

/// The environment detection reads: a lookup, so tests need not touch the process's.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Chooses the token source: an explicit `--token-file` or `--gitlab-variable` first; then
/// GitHub Actions (both `ACTIONS_ID_TOKEN_REQUEST_*` set); then Azure Pipelines
/// (`SYSTEM_OIDCREQUESTURI`, `SYSTEM_ACCESSTOKEN` and a service connection id); then GitLab
/// (`WIF_GITLAB_TOKEN_VARIABLE`); then `AZURE_FEDERATED_TOKEN_FILE`.
pub fn detect(options: &CiOptions, env: &dyn Env) -> Result<Arc<dyn TokenSource>, DetectError> {
    let audience = options
        .audience
        .clone()
        .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
    let ci = |e: SourceError| DetectError(e.to_string());
    if let Some(file) = &options.token_file {
        return Ok(Arc::new(FileSource(file.clone())));
    }
    if let Some(variable) = &options.gitlab_variable {
        return Ok(Arc::new(GitLab {
            variable: variable.clone(),
        }));
    }
    let github_url = env.var("ACTIONS_ID_TOKEN_REQUEST_URL");
    let github_token = env.var("ACTIONS_ID_TOKEN_REQUEST_TOKEN");
    if let (Some(url), Some(token)) = (&github_url, &github_token) {
        return Ok(Arc::new(
            GitHubActions::new(url.clone(), token.clone(), audience, options.timeout)
                .map_err(ci)?,
        ));
    }
    let ado_uri = env.var("SYSTEM_OIDCREQUESTURI");
    if let Some(uri) = &ado_uri {
        let connection = options.service_connection.clone().or_else(|| {
            SERVICE_CONNECTION_VARS
                .iter()
                .find_map(|name| env.var(name))
        });
        let access_token = env.var("SYSTEM_ACCESSTOKEN");
        return match (connection, access_token) {
            (Some(connection), Some(access_token)) => Ok(Arc::new(
                AzurePipelines::new(uri.clone(), access_token, connection, options.timeout)
                    .map_err(ci)?,
            )),
            (None, _) => Err(DetectError(
                "Azure Pipelines detected (SYSTEM_OIDCREQUESTURI is set) but no service \
                 connection id: give --service-connection ID or set AZURE_SERVICE_CONNECTION_ID"
                    .to_owned(),
            )),
            (Some(_), None) => Err(DetectError(
                "Azure Pipelines detected but SYSTEM_ACCESSTOKEN is not set: map it in the \
                 step with `env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)`"
                    .to_owned(),
            )),
        };
    }
    if let Some(variable) = env.var(GITLAB_VARIABLE_VAR) {
        return Ok(Arc::new(GitLab { variable }));
    }
    if let Some(file) = env.var("AZURE_FEDERATED_TOKEN_FILE") {
        return Ok(Arc::new(FileSource(PathBuf::from(file))));
    }
    if github_url.is_some() || github_token.is_some() || env.var("GITHUB_ACTIONS").is_some() {
        return Err(DetectError(
            "GitHub Actions detected but ACTIONS_ID_TOKEN_REQUEST_URL and \
             ACTIONS_ID_TOKEN_REQUEST_TOKEN are not both set: give the job \
             `permissions: id-token: write`"
                .to_owned(),
        ));
    }
    if env.var("GITLAB_CI").is_some() {
        return Err(DetectError(
            "GitLab CI detected but no token variable: declare one under the job's id_tokens \
             and give --gitlab-variable NAME or set WIF_GITLAB_TOKEN_VARIABLE"
                .to_owned(),
        ));
    }
    Err(DetectError(
        "no CI token source: found neither GitHub Actions (ACTIONS_ID_TOKEN_REQUEST_URL and \
         _TOKEN), Azure Pipelines (SYSTEM_OIDCREQUESTURI), a GitLab variable \
         (--gitlab-variable, WIF_GITLAB_TOKEN_VARIABLE), nor a token file (--token-file, \
         AZURE_FEDERATED_TOKEN_FILE)"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, &'static str>);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }
    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars(pairs.iter().copied().collect())
    }
    fn err(result: Result<Arc<dyn TokenSource>, DetectError>) -> DetectError {
        match result {
            Ok(source) => panic!("expected an error, got {}", source.describe()),
            Err(e) => e,
        }
    }
    fn options() -> CiOptions {
        CiOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    #[test]
    fn github_audience_is_appended_to_the_existing_query_and_encoded() {
        let source = GitHubActions::new(
            "https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0".into(),
            "bearer".into(),
            DEFAULT_AUDIENCE.into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            source.url().unwrap().as_str(),
            "https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange"
        );
    }

    #[test]
    fn azure_pipelines_url_names_the_api_version_and_the_connection() {
        let source = AzurePipelines::new(
            "https://dev.azure.com/contoso/p/_apis/distributedtask/hubs/build/plans/1/jobs/2/oidctoken".into(),
            "bearer".into(),
            "conn-1".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(
            source
                .url()
                .unwrap()
                .as_str()
                .ends_with("/oidctoken?api-version=7.1&serviceConnectionId=conn-1")
        );
    }

    #[test]
    fn detection_prefers_github_then_azure_pipelines_then_gitlab_then_a_file() {
        let github = [
            ("ACTIONS_ID_TOKEN_REQUEST_URL", "http://gh/?a=1"),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "t"),
        ];
        let ado = [
            ("SYSTEM_OIDCREQUESTURI", "http://ado/oidc"),
            ("SYSTEM_ACCESSTOKEN", "t"),
            ("AZURE_SERVICE_CONNECTION_ID", "c"),
        ];
        let all: Vec<_> = github
            .iter()
            .chain(ado.iter())
            .copied()
            .chain([
                ("WIF_GITLAB_TOKEN_VARIABLE", "AZURE_JWT"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ])
            .collect();
        let describe = |pairs: &[(&'static str, &'static str)]| {
            detect(&options(), &vars(pairs)).map(|s| s.describe())
        };
        assert!(describe(&all).unwrap().starts_with("GitHub Actions"));
        assert!(describe(&all[2..]).unwrap().starts_with("Azure Pipelines"));
        assert!(describe(&all[5..]).unwrap().starts_with("GitLab"));
        assert!(describe(&all[6..]).unwrap().starts_with("file"));
        let err = describe(&[]).unwrap_err();
        assert!(err.0.contains("no CI token source"), "{err}");
    }

    #[test]
    fn an_explicit_token_file_wins_over_detection() {
        let mut opts = options();
        opts.token_file = Some("/var/run/token".into());
        let source = detect(
            &opts,
            &vars(&[
                ("ACTIONS_ID_TOKEN_REQUEST_URL", "http://gh/?a=1"),
                ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "t"),
            ]),
        )
        .unwrap();
        assert_eq!(source.describe(), "file /var/run/token");
    }

    #[test]
    fn errors_name_what_is_missing() {
        let ado = vars(&[
            ("SYSTEM_OIDCREQUESTURI", "http://ado/oidc"),
            ("SYSTEM_ACCESSTOKEN", "t"),
        ]);
        let e = err(detect(&options(), &ado));
        assert!(e.0.contains("--service-connection"), "{e}");
        let mut opts = options();
        opts.service_connection = Some("c".into());
        let e = err(detect(
            &opts,
            &vars(&[("SYSTEM_OIDCREQUESTURI", "http://ado/oidc")]),
        ));
        assert!(e.0.contains("SYSTEM_ACCESSTOKEN"), "{e}");
        let e = err(detect(&options(), &vars(&[("GITHUB_ACTIONS", "true")])));
        assert!(e.0.contains("id-token: write"), "{e}");
    }
}
