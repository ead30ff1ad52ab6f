//! Starting a broker from a configuration built in code (as tests and embedders do): it is
//! checked by the same validation as a file, and the broker starts from the values
//! `wif-config` parsed (`BrokerConfig::parse`), never from the strings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tokio::net::TcpListener;
use wif_broker::clock;
use wif_broker::server::{RunningBroker, StartError};
use wif_config::{BrokerConfig, ConfigError};

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.drain_secs = 0;
    config.store.url = "sqlite::memory:".into();
    config
}

fn problem_keys(err: StartError) -> Vec<String> {
    match err {
        StartError::Config(ConfigError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| p.key).collect()
        }
        other => panic!("expected an invalid configuration, got {other}"),
    }
}

#[tokio::test]
async fn a_configuration_built_in_code_is_validated_before_anything_starts() {
    // A host name would resolve if the broker bound the string; the parsed address never does.
    let mut bad = config();
    bad.server.listen = "localhost:0".into();
    let err = RunningBroker::start(&bad, clock::system())
        .await
        .unwrap_err();
    assert_eq!(problem_keys(err), ["server.listen"]);

    // On a listener bound already, the rest is still checked: every problem at once.
    let mut bad = config();
    bad.tokens.algorithms = vec!["HS256".into()];
    bad.server.trusted_proxies = vec!["10.0.0.1/8".into()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = RunningBroker::start_on(&bad, clock::system(), listener)
        .await
        .unwrap_err();
    assert_eq!(
        problem_keys(err),
        ["server.trusted_proxies[0]", "tokens.algorithms"]
    );
}

#[tokio::test]
async fn a_valid_configuration_starts_on_the_parsed_address() {
    let broker = RunningBroker::start(&config(), clock::system())
        .await
        .unwrap();
    assert!(broker.addr.ip().is_loopback());
    assert_ne!(broker.addr.port(), 0);
    let health = reqwest::get(format!("http://{}/healthz", broker.addr))
        .await
        .unwrap();
    assert!(health.status().is_success());
    broker.shutdown().await.unwrap();
}
