//! Loading end to end: file, environment overrides, validation, and the errors an
//! operator sees when one of them is wrong.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;

use wif_config::{BrokerConfig, ConfigError};

const IDENTITY: &str = r#"
[[identities]]
name = "deploy"
tenant_id = "11111111-1111-4111-8111-111111111111"
client_id = "22222222-2222-4222-8222-222222222201"

[[identities.federated_credentials]]
name = "github-main"
issuer = "https://token.actions.githubusercontent.com"
subject = "repo:contoso/app:ref:refs/heads/main"
"#;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_message(result: Result<BrokerConfig, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Parse { origin, message }) => (origin, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let text = format!("[server]\nlisten = \"127.0.0.1:8080\"\n{IDENTITY}");
    let config = BrokerConfig::from_toml_with_env(
        &text,
        "broker.toml",
        &vars(&[
            ("WIF_SERVER_LISTEN", "0.0.0.0:9443"),
            ("WIF_ENTRA_MAX_RETRIES", "7"),
            ("WIF_SERVER_MAX_BODY_BYTES", "131072"),
            ("WIF_OUTBOUND_ALLOW_LOOPBACK_HTTP", "true"),
            ("WIF_TOKENS_ALGORITHMS", r#"["RS256", "ES256"]"#),
            ("WIF_STORE_URL", "postgres://wif@db/wif"),
            ("WIF_LOG_LEVEL", "debug"),
        ]),
    )
    .unwrap();
    assert_eq!(config.server.listen, "0.0.0.0:9443");
    assert_eq!(config.entra.max_retries, 7);
    assert_eq!(config.server.max_body_bytes, 131_072);
    assert!(config.outbound.allow_loopback_http);
    assert_eq!(config.tokens.algorithms, ["RS256", "ES256"]);
    assert_eq!(config.store.url, "postgres://wif@db/wif");
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.identities.len(), 1, "the file's identities are kept");
}

#[test]
fn other_programs_variables_are_ignored() {
    let config = BrokerConfig::from_toml_with_env(
        IDENTITY,
        "broker.toml",
        &vars(&[
            ("WIF_AGENT_LISTEN", "127.0.0.1:1"),
            ("WIF_CONFIG", "/etc/wif/broker.toml"),
            ("WIF_SERVER_URL", "https://broker.example.com"),
            ("WIF_ADMIN_TOKEN", "not-a-key"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8080");
}

#[test]
fn an_unknown_key_in_a_known_section_names_the_variable() {
    let (origin, message) = parse_message(BrokerConfig::from_toml_with_env(
        IDENTITY,
        "broker.toml",
        &vars(&[
            ("WIF_SERVER_LISTEN", "0.0.0.0:1"),
            ("WIF_SERVER_LSTEN", "0.0.0.0:2"),
        ]),
    ));
    assert_eq!(origin, "environment");
    assert!(message.contains("WIF_SERVER_LSTEN"), "{message}");
    assert!(message.contains("unknown field `lsten`"), "{message}");
    assert!(
        message.contains("`listen`"),
        "lists the keys that exist: {message}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_variable() {
    let (_, message) = parse_message(BrokerConfig::from_toml_with_env(
        IDENTITY,
        "broker.toml",
        &vars(&[("WIF_ENTRA_TIMEOUT_SECS", "ten")]),
    ));
    assert!(
        message.starts_with("WIF_ENTRA_TIMEOUT_SECS sets `entra.timeout_secs`"),
        "{message}"
    );
}

#[test]
fn a_problem_with_an_overridden_key_points_at_the_variable() {
    let err = BrokerConfig::from_toml_with_env(
        IDENTITY,
        "broker.toml",
        &vars(&[("WIF_CACHE_MIN_REMAINING_SECS", "60")]),
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "cache.min_remaining_secs");
    assert!(
        problems[0]
            .message
            .ends_with("(set by environment variable WIF_CACHE_MIN_REMAINING_SECS)")
    );
}

#[test]
fn the_loopback_switch_can_come_from_the_environment() {
    let text = "[entra]\nauthority_host = \"http://127.0.0.1:9000\"\n";
    assert!(matches!(
        BrokerConfig::from_toml(text, "dev.toml"),
        Err(ConfigError::Invalid { .. })
    ));
    let config = BrokerConfig::from_toml_with_env(
        text,
        "dev.toml",
        &vars(&[("WIF_OUTBOUND_ALLOW_LOOPBACK_HTTP", "true")]),
    )
    .unwrap();
    assert_eq!(config.entra.authority_host, "http://127.0.0.1:9000");
}

#[test]
fn an_unknown_key_in_the_file_is_reported_with_its_line() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = \"0.0.0.0:80\"\n";
    let (origin, message) = parse_message(BrokerConfig::from_toml(text, "broker.toml"));
    assert_eq!(origin, "broker.toml");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("unknown field `lisen`"), "{message}");
}

#[test]
fn an_unknown_key_in_an_identity_is_reported_with_its_line() {
    let text = format!("{IDENTITY}audience = \"api://x\"\n");
    let (_, message) = parse_message(BrokerConfig::from_toml(&text, "broker.toml"));
    assert!(message.contains("line 11"), "{message}");
    assert!(message.contains("unknown field `audience`"), "{message}");
}

/// A file declaring several identities (read one identity at a time when nothing is
/// wrong): a mistake in a later one is reported as in the whole file, line and all.
#[test]
fn a_mistake_in_a_later_identity_is_reported_as_in_the_whole_file() {
    let identity = |k: usize| {
        IDENTITY
            .replace("\"deploy\"", &format!("\"deploy{k}\""))
            .replace("222222222201", &format!("2222222222{k:02}"))
    };
    let good: String = (0..3).map(identity).collect();
    let config = BrokerConfig::from_toml(&good, "broker.toml").unwrap();
    assert_eq!(config.identities.len(), 3);
    assert_eq!(config.identities[2].name, "deploy2");
    assert_eq!(config.identities[2].federated_credentials.len(), 1);

    // Each identity is 10 lines, the first blank and `subject` the last: the fourth
    // one's `subject` is line 40.
    let typo = format!("{}{}", good, identity(3).replace("subject =", "subjet ="));
    let (_, message) = parse_message(BrokerConfig::from_toml(&typo, "broker.toml"));
    assert!(message.contains("line 40"), "{message}");
    assert!(message.contains("unknown field `subjet`"), "{message}");

    let bad_id = format!(
        "{}{}",
        good,
        identity(3).replace("22222222-2222-4222-8222-222222222203", "not-a-guid")
    );
    match BrokerConfig::from_toml(&bad_id, "broker.toml") {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "identities[3].client_id");
        }
        other => panic!("expected the client id's problem, got {other:?}"),
    }
}

#[test]
fn syntax_and_type_errors_carry_line_numbers() {
    let (_, message) = parse_message(BrokerConfig::from_toml(
        "[log]\nlevel = \"info\"\nformat = json\n",
        "broker.toml",
    ));
    assert!(message.contains("line 3"), "{message}");

    let (_, message) = parse_message(BrokerConfig::from_toml(
        "[server]\n\nmax_body_bytes = \"64k\"\n",
        "broker.toml",
    ));
    assert!(message.contains("line 3"), "{message}");

    let (_, message) = parse_message(BrokerConfig::from_toml(
        "[[identities]]\nname = \"x\"\ncloud = \"azure\"\n",
        "broker.toml",
    ));
    assert!(message.contains("line 3"), "{message}");
    assert!(
        message.contains("usgov"),
        "lists the valid clouds: {message}"
    );
}

#[test]
fn invalid_lists_every_problem_at_once() {
    let text = r#"
[server]
listen = "localhost:8080"
tls_cert = "/etc/wif/tls.crt"

[cache]
min_remaining_secs = 60

[tokens]
algorithms = ["RS256", "HS256", "none"]

[[identities]]
name = "deploy"
tenant_id = "contoso"
client_id = "not-a-guid"

[[identities.federated_credentials]]
name = "x"
issuer = "http://token.actions.githubusercontent.com"
subject = "s"
"#;
    let err = BrokerConfig::from_toml(text, "broker.toml").unwrap_err();
    let rendered = err.to_string();
    let ConfigError::Invalid { origin, problems } = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(origin, "broker.toml");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "server.tls_key",
            "cache.min_remaining_secs",
            "tokens.algorithms",
            "tokens.algorithms",
            "identities[0].tenant_id",
            "identities[0].client_id",
            "identities[0].federated_credentials[0].issuer",
        ]
    );
    assert!(rendered.starts_with("invalid configuration (broker.toml):\n"));
    for problem in &problems {
        assert!(rendered.contains(&format!("  - {problem}")), "{rendered}");
    }
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(IDENTITY.as_bytes()).unwrap();
    let config = BrokerConfig::load(file.path()).unwrap();
    assert_eq!(config.identities[0].name, "deploy");

    let missing = file.path().with_extension("missing");
    match BrokerConfig::load(&missing) {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
}
