//! Every outbound HTTP call goes through a client built here: a timeout on every request,
//! no redirects (a redirect could leave https or the issuer's host), extra roots only from
//! an operator's `ca_file`, and plain http only to loopback when the operator allows it.

use std::path::Path;
use std::time::Duration;

use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    #[error("{url} is not an allowed URL: {reason}")]
    UrlNotAllowed { url: String, reason: &'static str },
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered with invalid JSON: {reason}")]
    Json { url: String, reason: String },
}

/// Builds a client whose every request times out after `timeout`.
pub fn client(timeout: Duration, ca_file: Option<&Path>) -> Result<reqwest::Client, OutboundError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wif-broker/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| OutboundError::CaFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OutboundError::CaFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(OutboundError::CaFile {
                path: path.display().to_string(),
                reason: "no PEM certificates found".into(),
            });
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| OutboundError::Client(e.to_string()))
}

/// Checks that `raw` is a URL the broker may call: https, or http to loopback when allowed.
pub fn check_url(raw: &str, allow_loopback_http: bool) -> Result<Url, OutboundError> {
    let not_allowed = |reason| OutboundError::UrlNotAllowed {
        url: raw.to_owned(),
        reason,
    };
    let url = Url::parse(raw).map_err(|_| not_allowed("not an absolute URL"))?;
    if url.host().is_none() {
        return Err(not_allowed("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(not_allowed("credentials in the URL"));
    }
    match url.scheme() {
        "https" => Ok(url),
        // The workspace's one loopback rule (docs/configuration.md, "Plain http to loopback
        // hosts").
        "http" if allow_loopback_http && wif_config::is_loopback(&url) => Ok(url),
        "http" if wif_config::is_loopback(&url) => Err(not_allowed(
            "plain http to loopback needs [outbound] allow_loopback_http = true",
        )),
        _ => Err(not_allowed("only https is allowed")),
    }
}

/// GETs `url` and parses JSON, refusing bodies over `limit` bytes without reading them all.
pub async fn get_json(
    client: &reqwest::Client,
    url: &Url,
    limit: usize,
) -> Result<serde_json::Value, OutboundError> {
    let fail = |reason: String| OutboundError::Request {
        url: url.to_string(),
        reason,
    };
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(OutboundError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let body = read_body(response, limit).await?;
    serde_json::from_slice(&body).map_err(|e| OutboundError::Json {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// Reads a response body, refusing more than `limit` bytes without reading them all.
pub async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, OutboundError> {
    let url = response.url().to_string();
    let too_large = || OutboundError::TooLarge {
        url: url.clone(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| OutboundError::Request {
        url: url.clone(),
        reason: describe(&e),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error in one line, without the URL's query (which never holds secrets here,
/// but keeps messages short).
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_allowed_loopback_http() {
        assert!(check_url("https://token.actions.githubusercontent.com", false).is_ok());
        assert!(check_url("http://example.com", true).is_err());
        assert!(check_url("http://127.0.0.1:8080", false).is_err());
        assert!(check_url("http://127.0.0.1:8080", true).is_ok());
        assert!(check_url("http://[::1]:8080", true).is_ok());
        assert!(check_url("http://localhost:1", true).is_ok());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("file:///etc/passwd", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }
}
