//! One audit event per decision (DESIGN.md step 8), written as a JSON line on the
//! `wif_audit` log target. Events carry the token's SHA-256 and `jti`, never the token.

use serde::Serialize;

/// What happened to one exchange request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub time: u64,
    pub request_id: String,
    pub endpoint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `ok` or the error code answered.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_correlation_id: Option<String>,
}

/// Emits the event.
pub fn record(event: &AuditEvent) {
    if !tracing::enabled!(target: "wif_audit", tracing::Level::INFO) {
        return;
    }
    match serde_json::to_string(event) {
        Ok(line) => tracing::info!(target: "wif_audit", "{line}"),
        Err(e) => tracing::error!(target: "wif_audit", error = %e, "cannot serialise audit event"),
    }
}
