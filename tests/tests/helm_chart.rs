//! The Helm chart (`helm/wif-broker`), rendered and linted by Helm's own engine
//! (helm-python-sdk) for the default values and several value sets; every rendered object
//! is validated against the Kubernetes schemas (kubernetes-validate; the CRD models for
//! ServiceMonitor and cert-manager objects), the broker configuration it renders is loaded
//! by the broker's own loader, and the default install's webhook is served by a real
//! broker with the certificate the chart generated.
//!
//! Needs `.venv` with the tools `.ci/run` installs; outside CI the test says so and passes
//! without checking, under `CI=true` it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Value, json};
use wif_config::BrokerConfig;
use wif_tests::k8s;

const NAMESPACE: &str = "wif-system";
/// `<release>-<chart>`: the release is `wif` (tests/python/k8s.py).
const FULLNAME: &str = "wif-wif-broker";
/// The admission webhook's own Service (and certificate).
const WEBHOOK: &str = "wif-wif-broker-webhook";

/// The value sets, by name. Names ending in `!` must be refused.
fn cases() -> Value {
    let ca =
        base64::engine::general_purpose::STANDARD.encode(wif_tests::pki::Pki::new("chart").ca_pem);
    json!([
        {"name": "default"},
        {"name": "webhook-off", "values": {"webhook": {"enabled": false}, "tls": {"enabled": false}}},
        {"name": "tls-cert-manager", "values": {"tls": {"source": "certManager"}}},
        {"name": "tls-cert-manager-issuer", "values": {"tls": {"source": "certManager",
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}}},
        {"name": "tls-secret", "values": {"tls": {"source": "secret", "existingSecret": "wif-broker-tls", "caBundle": ca}}},
        {"name": "ha-postgres", "values": {
            "replicaCount": 3,
            "podAntiAffinity": "hard",
            "store": {"type": "postgres", "postgres": {"existingSecret": "wif-broker-postgres"}},
            "admin": {"existingSecret": "wif-admin-tokens"},
            "signingKeys": {"existingSecret": "wif-signing-keys"},
            "brokerIssuer": {"url": "https://wif.contoso.com"},
            "networkPolicy": {"enabled": true, "webhookFrom": [{"ipBlock": {"cidr": "10.224.0.0/28"}}]},
            "webhook": {"failurePolicy": "Ignore", "defaultTenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
            "broker": {
                "extraEnv": [{"name": "WIF_ENTRA_MAX_RETRIES", "value": "5"}],
                "config": {
                    "cache": {"refresh_before_secs": 1200},
                    "server": {"request_timeout_secs": 30},
                    "identities": [{
                        "name": "payments",
                        "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                        "client_id": "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d",
                        "federated_credentials": [{
                            "name": "aks-payments",
                            "issuer": "https://westeurope.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/5c0e1a2b-3d4f-4a5b-8c6d-7e8f9a0b1c2d/",
                            "claims_matching_expression": "claims['kubernetes.io']['namespace'] eq 'payments'"
                        }]
                    }]
                }
            }
        }},
        {"name": "autoscaling", "values": {
            "store": {"type": "postgres", "postgres": {"existingSecret": "wif-broker-postgres"}},
            "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 5}
        }},
        {"name": "service-monitor", "values": {"metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}}}},
        {"name": "sqlite-with-replicas!", "values": {"replicaCount": 2}},
        {"name": "sqlite-with-autoscaling!", "values": {"autoscaling": {"enabled": true}}},
        {"name": "webhook-without-tls!", "values": {"tls": {"enabled": false}}},
        {"name": "network-policy-without-webhook-peers!", "values": {"networkPolicy": {"enabled": true}}},
        {"name": "webhook-on-the-api-port!", "values": {"webhook": {"port": 8443}}},
        {"name": "postgres-without-secret!", "values": {"store": {"type": "postgres"}}},
        {"name": "secret-without-ca-bundle!", "values": {"tls": {"source": "secret", "existingSecret": "x"}}},
        {"name": "bad-failure-policy!", "values": {"webhook": {"failurePolicy": "Sometimes"}}},
        {"name": "short-token!", "values": {"webhook": {"token": {"expirationSeconds": 60}}}},
        {"name": "unknown-key!", "values": {"replicas": 3}}
    ])
}

/// The render of every case, done once per test binary (None: tools missing, not CI).
fn rendered() -> Option<&'static Value> {
    static RENDERED: OnceLock<Option<Value>> = OnceLock::new();
    RENDERED
        .get_or_init(|| {
            let python = k8s::python()?;
            Some(k8s::run(
                &python,
                "render",
                &json!({
                    "chart": k8s::repo_root().join("helm/wif-broker"),
                    "kube_versions": k8s::KUBE_VERSIONS,
                    "cases": cases(),
                }),
            ))
        })
        .as_ref()
}

fn case(name: &str) -> Option<&'static Value> {
    let rendered = rendered()?;
    Some(
        rendered["cases"]
            .get(name)
            .unwrap_or_else(|| panic!("no case {name}")),
    )
}

fn objects(case: &Value) -> &Vec<Value> {
    case["objects"].as_array().unwrap()
}

fn find<'a>(case: &'a Value, kind: &str) -> Option<&'a Value> {
    objects(case).iter().find(|o| o["kind"] == kind)
}

/// The object of `kind` called `name`.
fn named<'a>(case: &'a Value, kind: &str, name: &str) -> &'a Value {
    objects(case)
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn one<'a>(case: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects(case).iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn kinds(case: &Value) -> BTreeSet<String> {
    objects(case)
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn broker_toml(case: &Value) -> String {
    one(case, "ConfigMap")["data"]["broker.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The broker's configuration as the broker would load it in the pod: the ConfigMap's
/// TOML with the Deployment's `WIF_*` environment (secret references filled in).
fn broker_config(case: &Value) -> BrokerConfig {
    let container = &one(case, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|e| {
                    let name = e["name"].as_str().unwrap().to_owned();
                    let value = match e["value"].as_str() {
                        Some(v) => v.to_owned(),
                        None => {
                            assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{e}");
                            "postgres://wif@postgres.db.svc:5432/wif".to_owned()
                        }
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default();
    BrokerConfig::from_toml_with_env(&broker_toml(case), "ConfigMap broker.toml", &env)
        .unwrap_or_else(|e| panic!("{e}\n{}", broker_toml(case)))
}

fn ok_cases() -> Vec<String> {
    cases()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .filter(|n| !n.ends_with('!'))
        .collect()
}

#[test]
fn every_value_set_renders_lints_clean_and_validates_against_the_kubernetes_schemas() {
    let Some(rendered) = rendered() else { return };
    assert!(
        rendered["helm"].as_str().unwrap().starts_with("v4."),
        "{}",
        rendered["helm"]
    );
    for name in ok_cases() {
        let case = &rendered["cases"][&name];
        assert!(case["error"].is_null(), "{name}: {}", case["error"]);
        assert!(objects(case).len() >= 5, "{name}: too few objects");
        let problems = case["problems"].as_array().unwrap();
        assert!(problems.is_empty(), "{name}: {problems:#?}");
        let lint = case["lint"].as_array().unwrap();
        assert!(lint.is_empty(), "{name}: helm lint --strict: {lint:#?}");
        for object in objects(case) {
            assert_eq!(
                object["metadata"]["labels"]["app.kubernetes.io/instance"], "wif",
                "{name}: {} lacks the chart's labels",
                object["kind"]
            );
        }
        assert!(
            case["notes"].as_str().is_some_and(|n| n.contains(FULLNAME)),
            "{name}: NOTES.txt"
        );
    }
}

#[test]
fn impossible_combinations_are_refused_with_the_reason() {
    let Some(rendered) = rendered() else { return };
    for (name, reason) in [
        ("sqlite-with-replicas!", "need store.type: postgres"),
        ("sqlite-with-autoscaling!", "need store.type: postgres"),
        ("webhook-without-tls!", "needs tls.enabled"),
        (
            "network-policy-without-webhook-peers!",
            "needs networkPolicy.webhookFrom",
        ),
        ("webhook-on-the-api-port!", "must differ from broker.port"),
        ("postgres-without-secret!", "store.postgres.existingSecret"),
        ("secret-without-ca-bundle!", "tls.caBundle"),
        ("bad-failure-policy!", "failurePolicy"),
        ("short-token!", "expirationSeconds"),
        ("unknown-key!", "replicas"),
    ] {
        let error = rendered["cases"][name]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} rendered: {}", rendered["cases"][name]));
        assert!(error.contains(reason), "{name}: {error}");
    }
}

#[test]
fn the_default_install_is_one_hardened_broker_with_the_webhook() {
    let Some(case) = case("default") else { return };
    let expected: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(case), expected);

    let deployment = one(case, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    let broker = &pod["containers"][0];
    assert_eq!(broker["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(broker["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        broker["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(broker["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(broker["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(broker["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert!(broker["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        broker["args"],
        json!(["serve", "--config", "/etc/wif-broker/config/broker.toml"])
    );
    let claim = one(case, "PersistentVolumeClaim");
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap();
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );

    let config = broker_config(case);
    assert!(config.webhook.enabled);
    assert_eq!(config.store.url, "sqlite:///var/lib/wif-broker/wif.db");
    assert_eq!(
        config.webhook.broker_url,
        format!("https://{FULLNAME}.{NAMESPACE}.svc:8443")
    );
    assert_eq!(config.webhook.agent_image, "wif-broker:0.1.0");
    assert_eq!(config.webhook.token_expiration_secs, 3600);
    assert_eq!(config.server.listen, "0.0.0.0:8443");
    // The Entra-compatible discovery names the Service clients use, whatever `Host` says.
    assert_eq!(
        config.server.public_url.as_deref(),
        Some(format!("https://{FULLNAME}.{NAMESPACE}.svc:8443").as_str())
    );
    // SIGTERM: the broker drains, then its deadline; the grace period covers both.
    assert_eq!(config.server.drain_secs, 10);
    assert_eq!(config.server.shutdown_timeout_secs, 20);
    assert_eq!(pod["terminationGracePeriodSeconds"], 35);
    // The webhook has its own TLS listener and certificate, apart from the API's.
    assert_eq!(config.webhook.listen, "0.0.0.0:9443");
    assert_eq!(
        config.webhook.tls_cert.as_deref(),
        Some(std::path::Path::new("/etc/wif-broker/webhook-tls/tls.crt"))
    );
    let ports = &pod["containers"][0]["ports"];
    assert_eq!(
        *ports,
        json!([
            {"name": "api", "containerPort": 8443, "protocol": "TCP"},
            {"name": "webhook", "containerPort": 9443, "protocol": "TCP"},
        ])
    );
    let api = named(case, "Service", FULLNAME);
    assert_eq!(
        api["spec"]["ports"].as_array().unwrap().len(),
        1,
        "the API Service does not lead to the webhook"
    );
    assert_eq!(api["spec"]["ports"][0]["targetPort"], "api");

    // The API server reaches the webhook's own Service, on its port, at the webhook's route.
    let service = named(case, "Service", WEBHOOK);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
    let webhook = one(case, "MutatingWebhookConfiguration");
    let hooks = webhook["webhooks"].as_array().unwrap();
    assert_eq!(
        hooks.len(),
        2,
        "wif-broker.io and azure-workload-identity labels"
    );
    for hook in hooks {
        let svc = &hook["clientConfig"]["service"];
        assert_eq!(svc["name"], service["metadata"]["name"]);
        assert_eq!(svc["namespace"], NAMESPACE);
        assert_eq!(svc["port"], service["spec"]["ports"][0]["port"]);
        assert_eq!(svc["path"], "/mutate/v1/pods");
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
        assert!(
            hook["namespaceSelector"]["matchExpressions"][0]["values"]
                .as_array()
                .unwrap()
                .contains(&json!(NAMESPACE)),
            "the broker's own namespace is never injected"
        );
    }
    assert_eq!(
        hooks[0]["objectSelector"]["matchLabels"],
        json!({"wif-broker.io/inject": "true"})
    );
    assert_eq!(
        hooks[1]["objectSelector"]["matchLabels"],
        json!({"azure.workload.identity/use": "true"})
    );
    let secret = named(case, "Secret", &format!("{WEBHOOK}-tls"));
    assert_eq!(
        hooks[0]["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );
    assert_ne!(
        secret["data"]["ca.crt"],
        named(case, "Secret", &format!("{FULLNAME}-tls"))["data"]["ca.crt"],
        "the webhook's own CA; the API's (which sidecars trust) is untouched"
    );
    let role = one(case, "ClusterRole");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}])
    );
}

#[test]
fn value_sets_change_what_they_should() {
    let Some(_) = rendered() else { return };

    let off = case("webhook-off").unwrap();
    for kind in ["MutatingWebhookConfiguration", "ClusterRole", "Secret"] {
        assert!(find(off, kind).is_none(), "webhook-off renders a {kind}");
    }
    let config = broker_config(off);
    assert!(!config.webhook.enabled);
    assert!(config.server.tls_cert.is_none());
    let broker = &one(off, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(broker["livenessProbe"]["httpGet"]["scheme"], "HTTP");

    let ha = case("ha-postgres").unwrap();
    let deployment = one(ha, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert!(deployment["spec"]["strategy"].is_null(), "rolling updates");
    assert!(find(ha, "PersistentVolumeClaim").is_none());
    assert_eq!(one(ha, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    assert!(find(ha, "HorizontalPodAutoscaler").is_none());
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    let env = &pod["containers"][0]["env"];
    assert_eq!(env[0]["name"], "WIF_STORE_URL");
    assert_eq!(
        env[0]["valueFrom"]["secretKeyRef"],
        json!({"name": "wif-broker-postgres", "key": "url"})
    );
    let config = broker_config(ha);
    assert!(config.store.url.starts_with("postgres://"));
    assert_eq!(config.identities[0].name, "payments");
    assert_eq!(config.cache.refresh_before_secs, 1200);
    assert_eq!(config.server.request_timeout_secs, 30);
    assert_eq!(config.server.listen, "0.0.0.0:8443", "the chart's keys win");
    assert_eq!(
        config.admin.tokens_file.as_deref(),
        Some(std::path::Path::new("/etc/wif-broker/admin/tokens"))
    );
    assert_eq!(
        config.webhook.default_tenant_id.as_deref(),
        Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert_eq!(
        config.broker_issuer.url.as_deref(),
        Some("https://wif.contoso.com")
    );
    assert_eq!(
        config.broker_issuer.signing_key_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/wif-broker/signing-keys/signing.pem"
        ))
    );
    assert_eq!(config.broker_issuer.published_key_files.len(), 2);
    assert!(
        broker_config(case("default").unwrap())
            .broker_issuer
            .url
            .is_none(),
        "not an issuer unless asked"
    );
    let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/wif-broker/admin"));
    assert!(mounts.contains(&"/etc/wif-broker/signing-keys"));
    assert_eq!(
        one(ha, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"],
        "Ignore"
    );
    let ingress = &one(ha, "NetworkPolicy")["spec"]["ingress"];
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "api", "protocol": "TCP"}])
    );
    assert!(ingress[0]["from"].is_null(), "sidecars come from anywhere");
    assert_eq!(
        ingress[1],
        json!({"ports": [{"port": "webhook", "protocol": "TCP"}],
               "from": [{"ipBlock": {"cidr": "10.224.0.0/28"}}]}),
        "the webhook port only from where the API server comes"
    );

    let scaled = case("autoscaling").unwrap();
    let hpa = one(scaled, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], FULLNAME);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert!(one(scaled, "Deployment")["spec"]["replicas"].is_null());
    assert!(find(scaled, "PodDisruptionBudget").is_some());

    let cm = case("tls-cert-manager").unwrap();
    assert!(
        find(cm, "Secret").is_none(),
        "cert-manager writes the Secret"
    );
    let certificates: Vec<&Value> = objects(cm)
        .iter()
        .filter(|o| o["kind"] == "Certificate")
        .collect();
    assert_eq!(
        certificates.len(),
        3,
        "a CA, the serving certificate and the webhook's"
    );
    let serving = named(cm, "Certificate", &format!("{FULLNAME}-tls"));
    assert!(
        serving["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{FULLNAME}.{NAMESPACE}.svc")))
    );
    let webhook_certificate = named(cm, "Certificate", &format!("{WEBHOOK}-tls"));
    assert_eq!(
        webhook_certificate["spec"]["dnsNames"][2],
        format!("{WEBHOOK}.{NAMESPACE}.svc")
    );
    let webhook = one(cm, "MutatingWebhookConfiguration");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{WEBHOOK}-tls")
    );
    assert!(webhook["webhooks"][0]["clientConfig"]["caBundle"].is_null());

    let issuer = case("tls-cert-manager-issuer").unwrap();
    assert!(find(issuer, "Issuer").is_none(), "the given issuer is used");
    for certificate in objects(issuer)
        .iter()
        .filter(|o| o["kind"] == "Certificate")
    {
        assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    }

    let secret = case("tls-secret").unwrap();
    assert!(find(secret, "Secret").is_none());
    let volume = one(secret, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "wif-broker-tls");
    let volumes = &one(secret, "Deployment")["spec"]["template"]["spec"]["volumes"];
    let webhook_tls = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "webhook-tls")
        .unwrap();
    assert_eq!(
        webhook_tls["secret"]["secretName"], "wif-broker-tls",
        "the given Secret serves the webhook too"
    );

    let monitored = case("service-monitor").unwrap();
    let monitor = one(monitored, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["key"], "ca.crt");
}

#[test]
fn the_readme_values_table_lists_every_value() {
    let Some(rendered) = rendered() else { return };
    fn leaves(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &path, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let mut values = BTreeSet::new();
    leaves(&rendered["values"], "", &mut values);
    let readme =
        std::fs::read_to_string(k8s::repo_root().join("helm/wif-broker/README.md")).unwrap();
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(key, _)| key.to_owned())
        .collect();
    let missing: Vec<&String> = values.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "values missing from the README table: {missing:?}"
    );
    let stale: Vec<&String> = table.difference(&values).collect();
    assert!(
        stale.is_empty(),
        "README rows for values that do not exist: {stale:?}"
    );
    for key in &values {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap();
        let meaning = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert!(!meaning.is_empty(), "{key} has no meaning in the README");
    }
}

#[tokio::test]
async fn the_default_install_serves_the_webhook_with_the_certificate_it_generated() {
    let Some(case) = case("default") else { return };
    let decode = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    // The pod's files: the ConfigMap's TOML and the TLS Secrets, at a temporary root.
    let dir = tempfile::tempdir().unwrap();
    let mut toml = broker_toml(case);
    for (secret, mount) in [
        (format!("{FULLNAME}-tls"), "tls"),
        (format!("{WEBHOOK}-tls"), "webhook-tls"),
    ] {
        let path = dir.path().join(mount);
        std::fs::create_dir(&path).unwrap();
        let secret = named(case, "Secret", &secret);
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(path.join(file), decode(&secret["data"][file])).unwrap();
        }
        toml = toml.replace(
            &format!("/etc/wif-broker/{mount}/"),
            &format!("{}/", path.to_str().unwrap()),
        );
    }
    let secret = named(case, "Secret", &format!("{FULLNAME}-tls"));
    let mut config = BrokerConfig::from_toml(&toml, "ConfigMap broker.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    config.webhook.listen = "127.0.0.1:0".into();
    config.store.url = "sqlite::memory:".into();
    wif_broker::crypto::install_provider();
    let broker = wif_broker::server::RunningBroker::start(&config, wif_broker::clock::system())
        .await
        .unwrap();
    let webhook_addr: SocketAddr = broker
        .webhook_url()
        .unwrap()
        .trim_start_matches("https://")
        .parse()
        .unwrap();

    // The API server's call: the webhook Service's DNS name, verified with the caBundle.
    let webhook = one(case, "MutatingWebhookConfiguration");
    let client_config = &webhook["webhooks"][0]["clientConfig"];
    let host = format!("{WEBHOOK}.{NAMESPACE}.svc");
    let ca = reqwest::Certificate::from_pem(&decode(&client_config["caBundle"])).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(
            &host,
            SocketAddr::from(([127, 0, 0, 1], webhook_addr.port())),
        )
        .build()
        .unwrap();
    let path = client_config["service"]["path"].as_str().unwrap();
    let url = format!("https://{host}:{}{path}", webhook_addr.port());
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(
            k8s::repo_root().join("tests/fixtures/admission/labelled-pod.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let answer: Value = http
        .post(&url)
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // The API's Service, with the API's CA: no webhook there.
    let api_host = format!("{FULLNAME}.{NAMESPACE}.svc");
    let api_ca = reqwest::Certificate::from_pem(&decode(&secret["data"]["ca.crt"])).unwrap();
    let api = reqwest::Client::builder()
        .tls_certs_only([api_ca])
        .resolve(
            &api_host,
            SocketAddr::from(([127, 0, 0, 1], broker.addr.port())),
        )
        .build()
        .unwrap()
        .post(format!("https://{api_host}:{}{path}", broker.addr.port()))
        .json(&review)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404);
    let patch: Value = serde_json::from_slice(&decode(&answer["response"]["patch"])).unwrap();
    let sidecar = patch
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["path"] == "/spec/initContainers/0")
        .unwrap();
    let env = sidecar["value"]["env"].as_array().unwrap();
    let ca_pem = env
        .iter()
        .find(|e| e["name"] == "WIF_AGENT_CA_PEM")
        .unwrap();
    assert_eq!(
        ca_pem["value"].as_str().unwrap().as_bytes(),
        decode(&secret["data"]["ca.crt"]),
        "sidecars trust the chart's CA"
    );
    assert_eq!(sidecar["value"]["image"], "wif-broker:0.1.0");
    broker.shutdown().await.unwrap();
}

#[test]
fn the_image_holds_the_binaries_the_chart_and_the_webhook_run() {
    // No container engine here: check that the Dockerfile, the chart's Deployment and the
    // injected sidecar agree on paths and user.
    let dockerfile = std::fs::read_to_string(k8s::repo_root().join("Dockerfile")).unwrap();
    let deployment =
        std::fs::read_to_string(k8s::repo_root().join("helm/wif-broker/templates/deployment.yaml"))
            .unwrap();
    // Each binary built alone, so the agent is not feature-unified with the broker.
    assert!(dockerfile.contains("cargo build --release --locked -p wif-agent \\\n"));
    // The broker without the `dev` feature: no emulators in the image.
    assert!(
        dockerfile
            .contains("cargo build --release --locked -p wif-broker --no-default-features \\\n")
    );
    assert!(
        dockerfile.contains("COPY --from=build /out/wif-broker /out/wif-agent /usr/local/bin/")
    );
    assert!(dockerfile.contains("USER 65532:65532"));
    assert_eq!(wif_broker::inject::AGENT_BINARY, "/usr/local/bin/wif-agent");
    assert_eq!(wif_broker::inject::SIDECAR_UID, 65532);
    assert!(deployment.contains(r#"command: ["/usr/local/bin/wif-broker"]"#));
    let dockerignore = std::fs::read_to_string(k8s::repo_root().join(".dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|l| l == "target/"));
}
