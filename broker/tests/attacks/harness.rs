//! The harness itself works: a broker started from a config exchanges a main-branch job's
//! token, so an attack test that sees a refusal sees it for the reason it asserts.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_main_job_gets_a_token_from_the_broker_under_attack_tests() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let got = exchange(&http, &broker.url(), &up.main_job_token(), ARM).await;
    assert_eq!(got.status, 200, "{got:?}\n{}", broker.output());
    assert_eq!(got.body["identity"]["name"], "deploy");
}
