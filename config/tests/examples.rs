//! The documented examples in `config/examples/` load and validate, and say what they
//! claim to say. A new `*.toml` dropped into that directory is tested automatically.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use wif_config::{BrokerConfig, Cloud};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> BrokerConfig {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    BrokerConfig::from_toml(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// Turns `# key = value` lines (a key shown at its default, or an optional key) into
/// real settings, leaving prose comments alone.
fn uncomment_settings(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let key_len = rest
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if key_len > 0 && rest[key_len..].starts_with(" = ") {
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_example_loads_and_validates() {
    let files = example_files();
    assert!(
        files.len() >= 3,
        "expected at least 3 examples in {}, found {files:?}",
        examples_dir().display()
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = BrokerConfig::from_toml(&text, &path.display().to_string()) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_commented_out_key_in_the_examples_is_real() {
    for path in example_files() {
        let text = uncomment_settings(&std::fs::read_to_string(&path).unwrap());
        if let Err(e) = BrokerConfig::from_toml(&text, &path.display().to_string()) {
            panic!("with commented-out keys enabled: {e}");
        }
    }
}

#[test]
fn the_defaults_shown_in_broker_toml_are_the_real_defaults() {
    let path = examples_dir().join("broker.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let as_shipped = BrokerConfig::from_toml(&text, "broker.toml").unwrap();
    let uncommented = BrokerConfig::from_toml(&uncomment_settings(&text), "uncommented").unwrap();
    assert_eq!(uncommented.server, as_shipped.server);
    assert_eq!(uncommented.cache, as_shipped.cache);
    assert_eq!(uncommented.tokens, as_shipped.tokens);
    assert_eq!(uncommented.jwks, as_shipped.jwks);
    assert_eq!(uncommented.outbound, as_shipped.outbound);
    // `ca_file` is shown as an example path, not a default.
    let mut entra = uncommented.entra.clone();
    entra.ca_file = None;
    assert_eq!(entra, as_shipped.entra);
}

#[test]
fn broker_example_is_production_shaped() {
    let config = load("broker.toml");
    assert!(config.identities.len() >= 3);
    assert!(config.server.tls_cert.is_some() && config.server.tls_key.is_some());
    assert!(config.store.url.starts_with("postgres://"));
    assert!(!config.outbound.allow_loopback_http);
    assert_eq!(config.log.format, "json");

    let credentials: Vec<_> = config
        .identities
        .iter()
        .flat_map(|identity| &identity.federated_credentials)
        .collect();
    let github: Vec<_> = credentials
        .iter()
        .filter(|c| c.issuer == "https://token.actions.githubusercontent.com")
        .collect();
    assert!(
        github
            .iter()
            .any(|c| c.subject.as_deref() == Some("repo:contoso/payments-api:ref:refs/heads/main"))
    );
    assert!(github.iter().any(|c| {
        c.subject
            .as_deref()
            .is_some_and(|s| s.ends_with(":environment:production"))
    }));
    assert!(github.iter().any(|c| {
        c.claims_matching_expression
            .as_deref()
            .is_some_and(|e| e.contains("refs/heads/release/*"))
    }));

    let ado = credentials
        .iter()
        .find(|c| c.issuer.starts_with("https://vstoken.dev.azure.com/"))
        .unwrap();
    assert!(ado.subject.as_deref().unwrap().starts_with("sc://"));

    let aks = credentials
        .iter()
        .find(|c| c.issuer.contains(".oic.prod-aks.azure.com/"))
        .unwrap();
    assert!(aks.issuer.ends_with('/'), "AKS issuers end in a slash");
    assert_eq!(
        aks.claims_matching_expression.as_deref(),
        Some("claims['kubernetes.io']['namespace'] eq 'payments'")
    );
    assert_eq!(
        aks.effective_audiences(None),
        ["api://AzureADTokenExchange"]
    );

    let private = config
        .issuers
        .iter()
        .find(|i| i.jwks_file.is_some())
        .unwrap();
    assert!(
        credentials.iter().any(|c| c.issuer == private.url),
        "the private cluster's issuer is used by some credential"
    );
}

#[test]
fn minimal_example_relies_on_defaults() {
    let config = load("minimal.toml");
    assert_eq!(config.identities.len(), 1);
    assert_eq!(config.server, Default::default());
    assert_eq!(config.store, Default::default());
    let identity = &config.identities[0];
    assert_eq!(
        identity.effective_authority_host(&config.entra.authority_host),
        "https://login.microsoftonline.com"
    );
}

#[test]
fn sovereign_example_targets_us_government() {
    let config = load("sovereign.toml");
    let identity = &config.identities[0];
    assert_eq!(identity.cloud, Some(Cloud::UsGov));
    assert_eq!(
        identity.effective_authority_host(&config.entra.authority_host),
        "https://login.microsoftonline.us"
    );
    assert_eq!(
        identity.federated_credentials[0].effective_audiences(identity.cloud),
        ["api://AzureADTokenExchangeUSGov"]
    );
}

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_toml_examples_in_the_reference_are_valid() {
    let doc = reference();
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(!blocks.is_empty());
    for block in blocks {
        if let Err(e) = BrokerConfig::from_toml(block, "docs/configuration.md") {
            panic!("{e}\n{block}");
        }
    }
}

#[test]
fn the_reference_documents_every_key_with_its_default() {
    let doc = reference();
    let defaults = toml::Table::try_from(BrokerConfig::default()).unwrap();
    for (section, table) in &defaults {
        let Some(table) = table.as_table() else {
            continue;
        };
        let heading = format!("## `[{section}]`");
        let Some(start) = doc.find(&heading) else {
            panic!("docs/configuration.md has no {heading}");
        };
        let body = &doc[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        for (key, value) in table {
            let shown = match value {
                toml::Value::Array(_) => continue, // described in words
                toml::Value::String(s) => format!("`\"{s}\"`"),
                other => format!("`{other}`"),
            };
            let Some(row) = body
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
            else {
                panic!("{section}.{key} is not in docs/configuration.md");
            };
            assert!(
                row.contains(&shown),
                "{section}.{key}: default {shown} not in row {row}"
            );
        }
    }
}

#[test]
fn kubernetes_example_serves_the_webhook_over_tls() {
    let config = load("kubernetes.toml");
    assert!(config.webhook.enabled);
    assert!(config.server.tls_cert.is_some() && config.server.tls_key.is_some());
    assert!(config.webhook.broker_url.starts_with("https://"));
    assert!(config.webhook.broker_ca_file.is_some());
    // Everything else is at its default (the commented-out lines show them).
    assert_eq!(
        config.webhook,
        wif_config::WebhookConfig {
            enabled: true,
            listen: "0.0.0.0:9443".into(),
            tls_cert: config.server.tls_cert.clone(),
            tls_key: config.server.tls_key.clone(),
            broker_url: config.webhook.broker_url.clone(),
            broker_ca_file: config.webhook.broker_ca_file.clone(),
            agent_image: config.webhook.agent_image.clone(),
            ..Default::default()
        }
    );
}

#[test]
fn the_assertion_sources_example_uses_each_source() {
    let config = load("assertion-sources.toml");
    assert_eq!(
        config.broker_issuer.url.as_deref(),
        Some("https://wif.contoso.com")
    );
    let sources: Vec<_> = config.identities.iter().map(|i| i.assertion).collect();
    assert_eq!(
        sources,
        vec![
            wif_config::AssertionSource::Broker,
            wif_config::AssertionSource::ManagedIdentity,
            wif_config::AssertionSource::Certificate,
        ]
    );
    assert_eq!(
        config.identities[0].assertion_subject.as_deref(),
        Some("fleet-production")
    );
}
