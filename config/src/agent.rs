//! The agent's configuration (`wif-agent --config FILE`). Every key can also be given as a
//! command-line flag, which wins over the file; `WIF_AGENT_<KEY>` variables override keys
//! of the file too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// `wif-agent` settings. Flags of the same name override these.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The broker's base URL, e.g. `https://wif-broker.wif.svc:8443`.
    pub broker: Option<String>,
    /// The external token, re-read for every exchange (kubelet rewrites it). Defaults to
    /// `AZURE_FEDERATED_TOKEN_FILE` when neither this nor `token_command` is set.
    pub token_file: Option<PathBuf>,
    /// A command whose standard output is the external token (run for every exchange).
    pub token_command: Option<String>,
    /// Where to listen, `host:port` (loopback by default).
    pub listen: String,
    /// Also (or instead, with `listen = ""`) listen on this Unix socket.
    pub unix_socket: Option<PathBuf>,
    /// The App Service protocol's `X-IDENTITY-HEADER` secret; prefer the environment
    /// variable `WIF_AGENT_IDENTITY_HEADER` over putting it in a file.
    pub identity_header: Option<String>,
    /// The identity to ask the broker for when a request names none.
    pub identity: Option<String>,
    /// Extra PEM roots for the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// Extra PEM roots given inline, normally as `WIF_AGENT_CA_PEM` (the admission webhook
    /// hands sidecars the broker's CA this way); added to `ca_file`'s.
    pub ca_pem: Option<String>,
    /// Client certificate and key (PEM) for brokers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Timeout of one call to the broker.
    pub timeout_secs: u64,
    /// Retries after the first attempt when the broker is unreachable or answers 5xx.
    pub retries: u32,
    /// Serve the IMDS protocol. IMDS requests carry no secret, so anything that can reach
    /// the listener can ask; turn it off where the listener is shared (a `hostNetwork`
    /// pod's sidecar listens on the node's loopback) and rely on the App Service protocol.
    pub imds: bool,
    /// Tokens are refreshed in the background once they have less than this left.
    pub refresh_before_secs: u64,
    /// A token with less than this left is never handed out (the SDKs' own floor).
    pub min_remaining_secs: u64,
    /// Time a client has to send a request's headers (from connecting, or from the first
    /// byte of a later request on the connection).
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection idle this long between requests is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once; 8 more serve only `/healthz`, `/readyz`, `/metrics`.
    pub max_connections: usize,
    /// On SIGTERM, how long the agent keeps serving (with `/readyz` failing) before it stops
    /// accepting.
    pub drain_secs: u64,
    /// After the drain, time allowed for requests in flight; those still running are then
    /// answered 503 `shutting_down`.
    pub shutdown_timeout_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            broker: None,
            token_file: None,
            token_command: None,
            listen: "127.0.0.1:8181".into(),
            unix_socket: None,
            identity_header: None,
            identity: None,
            ca_file: None,
            ca_pem: None,
            client_cert: None,
            client_key: None,
            timeout_secs: 10,
            retries: 2,
            imds: true,
            refresh_before_secs: 600,
            min_remaining_secs: 300,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 256,
            drain_secs: 0,
            shutdown_timeout_secs: 10,
        }
    }
}

impl AgentConfig {
    /// Parses TOML, overlays `WIF_AGENT_*` variables from `vars`, validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        vars: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("WIF_AGENT_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if crate::env::is_service_link(&key, value) {
                continue;
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !matches!(v, toml::Value::Table(_)))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            // Paths, URLs and secrets are strings even when they look like numbers.
            let value = match key.as_str() {
                "timeout_secs"
                | "retries"
                | "refresh_before_secs"
                | "min_remaining_secs"
                | "header_read_timeout_secs"
                | "idle_timeout_secs"
                | "max_connections"
                | "drain_secs"
                | "shutdown_timeout_secs"
                | "imds" => parsed,
                _ => toml::Value::String(value.clone()),
            };
            table.insert(key, value);
        }
        let config: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<crate::Problem> {
        let mut p = Vec::new();
        let mut push = |key: &str, message: &str| {
            p.push(crate::Problem {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.token_file.is_some() && self.token_command.is_some() {
            push(
                "token_command",
                "give token_file or token_command, not both",
            );
        }
        if self
            .ca_pem
            .as_deref()
            .is_some_and(|pem| !pem.contains("-----BEGIN CERTIFICATE-----"))
        {
            push("ca_pem", "holds no PEM certificate");
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            push("client_key", "client_cert and client_key come together");
        }
        if self.min_remaining_secs < 300 {
            push(
                "min_remaining_secs",
                "must be at least 300: the Azure SDKs treat a token with less left as expired",
            );
        }
        if self.refresh_before_secs <= self.min_remaining_secs {
            push("refresh_before_secs", "must be above min_remaining_secs");
        }
        for (key, value) in [
            ("timeout_secs", self.timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_connections", self.max_connections as u64),
            ("shutdown_timeout_secs", self.shutdown_timeout_secs),
        ] {
            if value == 0 {
                push(key, "must be above 0");
            }
        }
        if self
            .identity_header
            .as_deref()
            .is_some_and(|h| h.len() < 16)
        {
            push(
                "identity_header",
                "must be at least 16 characters: it is the only guard against other local processes (SSRF)",
            );
        }
        p
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_ca_can_come_inline_from_the_environment() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let config =
            AgentConfig::from_toml_with_env("", "defaults", &vars(&[("WIF_AGENT_CA_PEM", pem)]))
                .unwrap();
        assert_eq!(config.ca_pem.as_deref(), Some(pem));
        let err = AgentConfig::from_toml_with_env(
            "",
            "defaults",
            &vars(&[("WIF_AGENT_CA_PEM", "/etc/ca.crt")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("ca_pem: holds no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn imds_can_be_turned_off_and_service_links_are_ignored() {
        let config = AgentConfig::from_toml_with_env(
            "",
            "defaults",
            &vars(&[
                ("WIF_AGENT_IMDS", "false"),
                ("WIF_AGENT_SERVICE_HOST", "10.0.0.7"),
                ("WIF_AGENT_PORT_8181_TCP", "tcp://10.0.0.7:8181"),
            ]),
        )
        .unwrap();
        assert!(!config.imds);
        assert!(AgentConfig::default().imds);
        assert!(
            AgentConfig::from_toml_with_env("", "d", &vars(&[("WIF_AGENT_LISTNE", "x")])).is_err(),
            "a misspelt key is still an error"
        );
    }
}
