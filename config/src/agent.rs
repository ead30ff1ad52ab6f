//! The agent's configuration (`wif-agent --config FILE`). Every key can also be given as a
//! command-line flag, which wins over the file; `WIF_AGENT_<KEY>` variables override keys
//! of the file too.
//!
//! The two keys that need parsing, `broker` and `listen`, are parsed here, once, into
//! [`BrokerUrl`] and [`ListenAddr`]: by loading (a bad value is a problem naming its key)
//! and by the agent's `--broker` and `--listen` flags alike (their `FromStr`), so a bad
//! flag and a bad key say the same thing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, InvalidValue, shown};

/// The broker's base URL (`broker`, `--broker`): `http` or `https`, with a host. It
/// displays without a trailing `/`, the form `/v1/token` is appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl(url::Url);

impl BrokerUrl {
    /// The URL without a trailing `/`, e.g. `https://wif-broker.wif.svc:8443`.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl FromStr for BrokerUrl {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match url::Url::parse(s) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(Self(url))
            }
            _ => Err(InvalidValue(format!(
                "the broker URL {:?} is not an http(s) URL",
                shown(s)
            ))),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the agent listens on TCP (`listen`, `--listen`): an IP address and port, a host
/// name and port (resolved when the listener is bound, as before), or nothing (`""`: the
/// Unix socket only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `""`: no TCP listener.
    Off,
    Addr(SocketAddr),
    /// A host name (letters, digits, `-`, `_` and `.`) and a port, e.g. `localhost:8181`.
    Name {
        host: String,
        port: u16,
    },
}

impl FromStr for ListenAddr {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() {
            return Ok(Self::Off);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let name = s.rsplit_once(':').and_then(|(host, port)| {
            let is_name = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            let port = port.parse::<u16>().ok()?;
            is_name.then(|| Self::Name {
                host: host.to_owned(),
                port,
            })
        });
        name.ok_or_else(|| {
            InvalidValue(format!(
                "`{}` is not an address and port such as 127.0.0.1:8181, [::1]:8181 or \
                 localhost:8181 (\"\" for no TCP listener)",
                shown(s)
            ))
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => Ok(()),
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

serde_as_string!(BrokerUrl);
serde_as_string!(ListenAddr);

/// A key's parse function, answering what is wrong with a value.
type Check = fn(&str) -> Option<String>;

/// The keys of [`AgentConfig`] that are parsed, with their parse functions: checked on the
/// table before it becomes an [`AgentConfig`], so a bad value is a [`crate::Problem`] like
/// any other rather than a deserialisation error that hides the rest.
const PARSED_KEYS: &[(&str, Check)] = &[
    ("broker", |v| BrokerUrl::from_str(v).err().map(|e| e.0)),
    ("listen", |v| ListenAddr::from_str(v).err().map(|e| e.0)),
];

/// `wif-agent` settings. Flags of the same name override these.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The broker's base URL, e.g. `https://wif-broker.wif.svc:8443`.
    pub broker: Option<BrokerUrl>,
    /// The external token, re-read for every exchange (kubelet rewrites it). Defaults to
    /// `AZURE_FEDERATED_TOKEN_FILE` when neither this nor `token_command` is set.
    pub token_file: Option<PathBuf>,
    /// A command whose standard output is the external token (run for every exchange).
    pub token_command: Option<String>,
    /// Where to listen, `host:port` (loopback by default); `""` for no TCP listener.
    pub listen: ListenAddr,
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
            listen: ListenAddr::Addr(SocketAddr::from(([127, 0, 0, 1], 8181))),
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
        // A bad value is reported as a problem, and the key left at its default so the
        // rest can still be checked.
        let mut problems = Vec::new();
        for (key, check) in PARSED_KEYS {
            if let Some(message) = table.get(*key).and_then(|v| v.as_str()).and_then(check) {
                table.remove(*key);
                problems.push(crate::Problem {
                    key: (*key).to_owned(),
                    message,
                });
            }
        }
        let config: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
        problems.extend(config.problems());
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
    fn broker_and_listen_are_parsed_once_and_problems_name_them() {
        let config = AgentConfig::from_toml_with_env(
            "broker = \"https://wif-broker.wif.svc:8443/\"\nlisten = \"localhost:8181\"",
            "agent.toml",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.broker.as_ref().map(BrokerUrl::as_str),
            Some("https://wif-broker.wif.svc:8443")
        );
        assert_eq!(
            config.listen,
            ListenAddr::Name {
                host: "localhost".into(),
                port: 8181
            }
        );
        assert_eq!(
            AgentConfig::default().listen.to_string(),
            "127.0.0.1:8181",
            "the default"
        );
        for (listen, parsed) in [
            (
                "[::1]:8181",
                ListenAddr::Addr("[::1]:8181".parse().unwrap()),
            ),
            ("0.0.0.0:0", ListenAddr::Addr("0.0.0.0:0".parse().unwrap())),
            ("", ListenAddr::Off),
        ] {
            let config =
                AgentConfig::from_toml_with_env("", "d", &vars(&[("WIF_AGENT_LISTEN", listen)]))
                    .unwrap();
            assert_eq!(config.listen, parsed, "{listen}");
            assert_eq!(config.listen.to_string(), listen);
        }
        let err = AgentConfig::from_toml_with_env(
            "broker = \"wif-broker:8443\"\nlisten = \"127.0.0.1\"\nmin_remaining_secs = 1",
            "agent.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "broker: the broker URL \"wif-broker:8443\" is not an http(s) URL",
            "listen: `127.0.0.1` is not an address and port",
            "min_remaining_secs: must be at least 300",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        for bad in ["ftp://broker", "https://", "/v1/token", "broker"] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
        for bad in [
            "127.0.0.1:99999",
            ":8181",
            "a b:8181",
            "localhost",
            " 127.0.0.1:8181",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        let err = AgentConfig::from_toml_with_env(
            "",
            "d",
            &vars(&[("WIF_AGENT_BROKER", "broker.example")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("broker: the broker URL"), "{err}");
    }

    #[test]
    fn the_parsed_keys_are_written_as_they_are_read() {
        let config = AgentConfig::from_toml_with_env(
            "broker = \"http://127.0.0.1:8080\"\nlisten = \"[::1]:8181\"",
            "d",
            &[],
        )
        .unwrap();
        let text = toml::to_string(&config).unwrap();
        assert!(
            text.contains("broker = \"http://127.0.0.1:8080\""),
            "{text}"
        );
        assert!(text.contains("listen = \"[::1]:8181\""), "{text}");
        assert_eq!(
            AgentConfig::from_toml_with_env(&text, "d", &[]).unwrap(),
            config
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
