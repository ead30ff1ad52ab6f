//! The admin API as the CLI calls it: one HTTP client with a 30 s timeout and no
//! redirects, the admin token as a bearer header marked sensitive, and the broker's error
//! JSON turned into a message an admin can act on.
//!
//! The admin token is never printed: not in errors, not in `Debug` output, not in `--help`
//! (the environment value is hidden there too).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// How long any admin call may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A secret taken from the command line or the environment: `Debug` redacts it.
pub use wif_proto::secret::Secret;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not a broker URL: {1}")]
    BadServerUrl(String, String),
    #[error("cannot build the HTTP client: {0}")]
    Setup(String),
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the broker at {url} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { url: String },
    /// The broker answered with its error JSON.
    #[error("{0}")]
    Api(ApiFailure),
    /// Something answered, but not with the broker's JSON (a proxy, another server).
    #[error("{url} answered HTTP {status}{}", snippet(body))]
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let mut cut: String = body.chars().take(200).collect();
    if cut.len() < body.len() {
        cut.push_str("...");
    }
    format!(": {}", crate::output::clean(&cut))
}

/// The broker's error body: `{"error","error_description","request_id"}`, and for
/// admin validation errors `"details":[{"field","message"}]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiFailure {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub details: Vec<FieldError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// `<description> (<code>, request <id>)`, then one line per invalid field.
impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::output::clean;
        let description = if self.error_description.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            clean(&self.error_description)
        };
        write!(f, "{description} ({}", clean(&self.error))?;
        if !self.request_id.is_empty() {
            write!(f, ", request {}", clean(&self.request_id))?;
        }
        f.write_str(")")?;
        for detail in &self.details {
            match detail.field.as_str() {
                "" => write!(f, "\n  {}", clean(&detail.message))?,
                field => write!(f, "\n  {}: {}", clean(field), clean(&detail.message))?,
            }
        }
        Ok(())
    }
}

/// A successful answer: the status, and the JSON body unless there was none (204).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// The `ETag` header, when the resource has one.
    pub etag: Option<String>,
}

impl Answer {
    /// The body as a typed value, plus the raw JSON (what `--output json` prints).
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<(T, Value)> {
        let body = self.body.unwrap_or(Value::Null);
        let typed = serde_json::from_value(body.clone())
            .map_err(|e| anyhow::anyhow!("the broker answered JSON this CLI cannot read: {e}"))?;
        Ok((typed, body))
    }
}

/// The admin API of one broker.
pub struct AdminClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    pub fn new(server: &str, token: Secret, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = server_url(server)?;
        let http = wif_proto::outbound::client(TIMEOUT, ca_file)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self { http, base, token })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the server URL, each segment percent-encoded, so an
    /// identity named `a/b` stays one segment.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Calls the admin API; any non-2xx answer is an error.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&impl serde::Serialize>,
    ) -> Result<Answer, ClientError> {
        self.call_if(method, segments, query, body, &[]).await
    }

    /// [`Self::call`] with conditions: `If-Match` / `If-None-Match` headers.
    pub async fn call_if(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&impl serde::Serialize>,
        conditions: &[(reqwest::header::HeaderName, &str)],
    ) -> Result<Answer, ClientError> {
        let url = self.url(segments);
        let mut request = self
            .http
            .request(method, url.clone())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, self.bearer()?);
        for (name, value) in conditions {
            request = request.header(name.clone(), *value);
        }
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let header_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        let shown_url = without_query(&url);
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Answer {
                    status,
                    body: None,
                    etag,
                });
            }
            return match serde_json::from_slice(&bytes) {
                Ok(body) => Ok(Answer {
                    status,
                    body: Some(body),
                    etag,
                }),
                Err(_) => Err(ClientError::Unexpected {
                    url: shown_url,
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                }),
            };
        }
        match serde_json::from_slice::<ApiFailure>(&bytes) {
            Ok(mut failure) => {
                failure.status = status.as_u16();
                if failure.request_id.is_empty() {
                    failure.request_id = header_request_id.unwrap_or_default();
                }
                Err(ClientError::Api(failure))
            }
            Err(_) => Err(ClientError::Unexpected {
                url: shown_url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    fn bearer(&self) -> Result<HeaderValue, ClientError> {
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", self.token.expose())).map_err(|_| {
                ClientError::Setup("the admin token holds characters a header cannot".into())
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn transport(&self, e: &reqwest::Error) -> ClientError {
        let url = self.base.to_string();
        if e.is_timeout() {
            return ClientError::Timeout { url };
        }
        // The innermost cause says what went wrong ("Connection refused", "certificate
        // unknown"); reqwest's own message repeats the URL.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        ClientError::Unreachable { url, reason }
    }
}

fn server_url(raw: &str) -> Result<Url, ClientError> {
    let bad = |why: &str| ClientError::BadServerUrl(raw.to_owned(), why.to_owned());
    let url = Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("use http:// or https://"));
    }
    if url.host().is_none() {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials belong in --admin-token, not in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment, please"));
    }
    Ok(url)
}

fn without_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> AdminClient {
        wif_proto::crypto::install_provider();
        AdminClient::new(server, Secret::new("s3cret"), None).unwrap()
    }

    #[test]
    fn names_are_single_path_segments_under_the_server_url() {
        let c = client("https://broker.example/wif/");
        assert_eq!(
            c.url(&["v1", "identities", "a/b c"]).as_str(),
            "https://broker.example/wif/v1/identities/a%2Fb%20c"
        );
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["v1", "identities"]).as_str(),
            "http://127.0.0.1:8080/v1/identities"
        );
    }

    #[test]
    fn odd_server_urls_are_refused() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://broker",
            "https://alice:pw@broker",
            "https://broker/?x=1",
            "nope",
        ] {
            assert!(server_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = client("https://broker.example");
        let text = format!("{c:?} {:?}", Secret::new("s3cret"));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(c.bearer().unwrap().is_sensitive());
    }

    #[test]
    fn api_errors_read_like_the_contract_with_one_line_per_field() {
        let failure: ApiFailure = serde_json::from_str(
            r#"{"error":"invalid_request","error_description":"the credential is not valid",
                "request_id":"r-1","details":[{"field":"issuer","message":"must be https"},
                {"field":"subject","message":"subject or claimsMatchingExpression is required"}]}"#,
        )
        .unwrap();
        assert_eq!(
            failure.to_string(),
            "the credential is not valid (invalid_request, request r-1)\n  \
             issuer: must be https\n  \
             subject: subject or claimsMatchingExpression is required"
        );
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_named() {
        // Port 9 (discard) on loopback is closed on test machines.
        let c = client("http://127.0.0.1:9");
        let err = c
            .call(Method::GET, &["v1", "identities"], &[], None::<&()>)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach the broker at http://127.0.0.1:9/"),
            "{text}"
        );
        assert!(!text.contains("s3cret"));
    }
}
