//! The sidecar-injecting admission webhook, as the Kubernetes API server uses it:
//! AdmissionReview fixtures (`tests/fixtures/admission/`) are POSTed over TLS to a real
//! broker's webhook listener (`[webhook] listen`, apart from the API port), the returned JSON Patch is applied, and the resulting pod is checked for the
//! sidecar, the variables and the token volume, and validated against the Kubernetes
//! schemas (kubernetes-validate, through `tests/python/k8s.py`). The service accounts'
//! annotations come from a stand-in for the Kubernetes API on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use clap::Parser;
use serde_json::{Value, json};
use wif_agent::broker::BrokerClient;
use wif_agent::serve::{Agent, AgentSettings, RunningAgent};
use wif_agent::source::FileSource;
use wif_broker::clock::SharedClock;
use wif_tests::pki::Pki;
use wif_tests::{PAYMENTS_CLIENT, Stack, k8s, kubernetes_claims};

/// What injected sidecars are told the broker's URL is (a cluster Service name; the tests
/// reach the same broker on loopback).
const BROKER_URL: &str = "https://wif-broker.wif-system.svc:8443";
const AGENT_IMAGE: &str = "registry.example.com/wif/wif-broker:0.1.0";
const KUBE_TOKEN: &str = "kube-api-token-for-tests";
const AZWI_CLIENT: &str = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716";
const AZWI_TENANT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// A stand-in for the Kubernetes API: `GET /api/v1/namespaces/{ns}/serviceaccounts/{name}`
/// for the service accounts below, with bearer-token checking, counting calls.
struct FakeKube {
    url: String,
    calls: Arc<Mutex<Vec<String>>>,
}

async fn service_account(
    State(calls): State<Arc<Mutex<Vec<String>>>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    calls.lock().unwrap().push(format!("{namespace}/{name}"));
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {KUBE_TOKEN}"))
    {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let annotations = match (namespace.as_str(), name.as_str()) {
        ("legacy", "workload-identity-sa") => json!({
            "azure.workload.identity/client-id": AZWI_CLIENT,
            "azure.workload.identity/tenant-id": AZWI_TENANT,
        }),
        ("payments", "api") | ("monitoring", "node-agent") => json!({}),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"kind": "Status", "code": 404, "reason": "NotFound"})),
            )
                .into_response();
        }
    };
    Json(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
    }))
    .into_response()
}

impl FakeKube {
    async fn start() -> FakeKube {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
                get(service_account),
            )
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeKube { url, calls }
    }
}

struct Webhook {
    stack: Stack,
    pki: Pki,
    kube: FakeKube,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Webhook {
    /// A broker serving TLS with the webhook on its own TLS listener, as the Helm chart
    /// runs it.
    async fn start() -> Webhook {
        let kube = FakeKube::start().await;
        let pki = Pki::new("webhook");
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("tls.crt"), &pki.cert_pem).unwrap();
        std::fs::write(path("tls.key"), &pki.key_pem).unwrap();
        std::fs::write(path("ca.crt"), &pki.ca_pem).unwrap();
        std::fs::write(path("kube-token"), format!("{KUBE_TOKEN}\n")).unwrap();
        let kube_url = kube.url.clone();
        let stack = Stack::start_with(|cfg| {
            cfg.server.tls_cert = Some(path("tls.crt"));
            cfg.server.tls_key = Some(path("tls.key"));
            cfg.webhook.enabled = true;
            cfg.webhook.listen = "127.0.0.1:0".into();
            cfg.webhook.tls_cert = Some(path("tls.crt"));
            cfg.webhook.tls_key = Some(path("tls.key"));
            cfg.webhook.broker_url = BROKER_URL.into();
            cfg.webhook.broker_ca_file = Some(path("ca.crt"));
            cfg.webhook.agent_image = AGENT_IMAGE.into();
            cfg.webhook.kube_api_url = Some(kube_url);
            cfg.webhook.kube_token_file = path("kube-token");
            cfg.webhook.kube_ca_file = path("no-such-ca.crt");
        })
        .await;
        let http = pki.client();
        Webhook {
            stack,
            pki,
            kube,
            http,
            _dir: dir,
        }
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/mutate/v1/pods", self.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.unwrap())
    }

    /// `https://addr` of the webhook's own listener.
    fn url(&self) -> String {
        self.stack.broker.webhook_url().unwrap()
    }

    /// POSTs `review` and checks the AdmissionReview envelope; returns `response`.
    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self.post(review.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1", "{body}");
        assert_eq!(body["kind"], "AdmissionReview", "{body}");
        assert_eq!(body["response"]["uid"], review["request"]["uid"], "{body}");
        body["response"].clone()
    }

    /// Sends `review`, applies the returned patch to its pod, and returns the new pod.
    async fn mutate(&self, review: &Value) -> (Value, Value) {
        let response = self.review(review).await;
        assert_eq!(response["allowed"], true, "{response}");
        let mut pod = review["request"]["object"].clone();
        if let Some(patch) = response.get("patch") {
            assert_eq!(response["patchType"], "JSONPatch");
            apply(&mut pod, patch);
        } else {
            assert!(response.get("patchType").is_none(), "{response}");
        }
        (pod, response)
    }
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/admission")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn apply(pod: &mut Value, patch: &Value) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap())
        .unwrap();
    let operations: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    json_patch::patch(pod, &operations).unwrap();
}

/// The same request again, carrying the mutated pod (what reinvocation sends).
fn again(review: &Value, pod: &Value) -> Value {
    let mut review = review.clone();
    review["request"]["object"] = pod.clone();
    review["request"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    review
}

fn env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["value"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry {name} in {pod}"))
}

/// Validates `pod` against the Kubernetes schemas when the tools are there.
fn assert_valid(pod: &Value) {
    if let Some(python) = k8s::python() {
        let problems = k8s::problems(&python, std::slice::from_ref(pod));
        assert!(problems.is_empty(), "{problems:#?}\n{pod:#}");
    }
}

#[tokio::test]
async fn a_labelled_pod_gets_the_native_sidecar_the_token_volume_and_the_variables() {
    let w = Webhook::start().await;
    let review = fixture("labelled-pod.json");
    let (pod, response) = w.mutate(&review).await;
    assert!(response.get("warnings").is_none(), "{response}");

    // The sidecar: first init container, native (restartPolicy Always), non-root.
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    let sidecar = &init[0];
    assert_eq!(sidecar["name"], "wif-agent");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], AGENT_IMAGE);
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sidecar["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(init[1]["name"], "migrate");
    let sidecar_env = env(sidecar);
    assert_eq!(sidecar_env["WIF_AGENT_CA_PEM"], w.pki.ca_pem);
    assert!(sidecar_env["WIF_AGENT_IDENTITY_HEADER"].len() >= 32);

    // The real wif-agent command line accepts the injected arguments.
    let mut argv = vec!["wif-agent".to_owned()];
    argv.extend(
        sidecar["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    wif_agent::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(argv.windows(2).any(|a| a == ["--broker", BROKER_URL]));
    assert!(argv.windows(2).any(|a| a == ["--listen", "127.0.0.1:8181"]));

    // The projected token: in a new volume, mounted by the sidecar only.
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "the kube-api-access volume stays");
    let token = volumes
        .iter()
        .find(|v| v["name"] == "wif-broker-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"],
        json!({"path": "token", "audience": "api://AzureADTokenExchange", "expirationSeconds": 3600})
    );
    assert_eq!(sidecar["volumeMounts"][0]["name"], "wif-broker-token");
    let token_file = "/var/run/secrets/wif-broker.io/serviceaccount/token";
    assert!(argv.windows(2).any(|a| a == ["--token-file", token_file]));

    // The app: the SDK variables, its own AZURE_CLIENT_ID kept, the token not mounted.
    let app = container(&pod, "containers", "app");
    let app_env = env(app);
    assert_eq!(
        app_env["IDENTITY_ENDPOINT"],
        "http://127.0.0.1:8181/msi/token"
    );
    assert_eq!(
        app_env["IDENTITY_HEADER"],
        sidecar_env["WIF_AGENT_IDENTITY_HEADER"]
    );
    assert_eq!(
        app_env["AZURE_POD_IDENTITY_AUTHORITY_HOST"],
        "http://127.0.0.1:8181"
    );
    assert_eq!(
        app_env["AZURE_CLIENT_ID"], PAYMENTS_CLIENT,
        "not overwritten"
    );
    assert_eq!(app_env["LOG_LEVEL"], "info");
    assert!(
        !app_env.contains_key("AZURE_TENANT_ID"),
        "no tenant is known"
    );
    assert!(!app_env.contains_key("AZURE_FEDERATED_TOKEN_FILE"));
    assert!(
        app["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "wif-broker-token")
    );
    // The init container after the sidecar can use it; the skipped container gets nothing.
    assert_eq!(
        env(container(&pod, "initContainers", "migrate"))["IDENTITY_HEADER"],
        app_env["IDENTITY_HEADER"]
    );
    assert!(container(&pod, "containers", "metrics-exporter")["env"].is_null());
    assert_eq!(
        pod["metadata"]["annotations"]["wif-broker.io/injected-agent-port"],
        "8181"
    );
    assert_eq!(*w.kube.calls.lock().unwrap(), ["payments/api"]);
    assert_valid(&pod);

    // Reinvocation: nothing more to add.
    let response = w.review(&again(&review, &pod)).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // Another pod of the same Deployment gets its own header secret.
    let (other, _) = w.mutate(&review).await;
    assert_ne!(
        env(container(&other, "containers", "app"))["IDENTITY_HEADER"],
        app_env["IDENTITY_HEADER"]
    );
}

#[tokio::test]
async fn the_injected_sidecar_serves_the_app_a_token_from_the_broker() {
    let w = Webhook::start().await;
    let (pod, _) = w.mutate(&fixture("labelled-pod.json")).await;
    let sidecar = container(&pod, "initContainers", "wif-agent");
    let sidecar_env = env(sidecar);
    let app_env = env(container(&pod, "containers", "app"));

    // The sidecar as injected: its header secret, and the broker's CA from
    // WIF_AGENT_CA_PEM to verify the broker (reached on loopback instead of the Service
    // name). Kubelet would write the projected token; the AKS issuer mints one here.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        w.stack
            .aks
            .mint(kubernetes_claims("payments", "api"))
            .unwrap(),
    )
    .unwrap();
    let client = BrokerClient::with_roots(
        &w.stack.broker.url().parse().unwrap(),
        Duration::from_secs(5),
        0,
        None,
        Some(&sidecar_env["WIF_AGENT_CA_PEM"]),
        None,
    )
    .unwrap();
    let clock: SharedClock = w.stack.clock.clone();
    let agent = Agent::new(
        AgentSettings {
            client,
            source: Arc::new(FileSource(token_file)),
            header_secret: Some(sidecar_env["WIF_AGENT_IDENTITY_HEADER"].clone()),
            default_identity: None,
            min_remaining_secs: 300,
            refresh_before_secs: 600,
            imds: true,
        },
        clock,
    );
    let running = RunningAgent::start(agent, "127.0.0.1:0", None)
        .await
        .unwrap();
    let endpoint = app_env["IDENTITY_ENDPOINT"].replace(
        "127.0.0.1:8181",
        &running.url().unwrap().replace("http://", ""),
    );

    // The app's request, as the App Service protocol has SDKs make it.
    let http = reqwest::Client::new();
    let answer: Value = http
        .get(&endpoint)
        .query(&[
            ("api-version", "2019-08-01"),
            ("resource", "https://management.azure.com/"),
            ("client_id", app_env["AZURE_CLIENT_ID"].as_str()),
        ])
        .header("X-IDENTITY-HEADER", &app_env["IDENTITY_HEADER"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = w.stack.verify_access_token(
        answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}")),
    );
    assert_eq!(claims["appid"], PAYMENTS_CLIENT, "{claims}");
    assert_eq!(answer["client_id"], PAYMENTS_CLIENT);

    // Without the pod's header the sidecar refuses.
    let refused = http
        .get(&endpoint)
        .query(&[
            ("api-version", "2019-08-01"),
            ("resource", "https://management.azure.com/"),
        ])
        .header("X-IDENTITY-HEADER", "not-the-pods-secret-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    running.shutdown().await;
}

#[tokio::test]
async fn an_unlabelled_pod_is_untouched() {
    let w = Webhook::start().await;
    let review = fixture("unlabelled-pod.json");
    let (pod, response) = w.mutate(&review).await;
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(pod, review["request"]["object"]);
    assert!(
        w.kube.calls.lock().unwrap().is_empty(),
        "no lookup for pods that did not opt in"
    );
}

#[tokio::test]
async fn an_azure_workload_identity_pod_is_served_with_the_ids_of_its_service_account() {
    let w = Webhook::start().await;
    let review = fixture("azure-workload-identity-pod.json");
    let (pod, response) = w.mutate(&review).await;
    assert!(response.get("warnings").is_none(), "{response}");
    let sidecar = container(&pod, "initContainers", "wif-agent");
    assert_eq!(sidecar["restartPolicy"], "Always");
    let app = env(container(&pod, "containers", "reporter"));
    assert_eq!(app["AZURE_CLIENT_ID"], AZWI_CLIENT);
    assert_eq!(app["AZURE_TENANT_ID"], AZWI_TENANT);
    assert_eq!(app["IDENTITY_ENDPOINT"], "http://127.0.0.1:8181/msi/token");
    assert_eq!(
        app["IDENTITY_HEADER"],
        env(sidecar)["WIF_AGENT_IDENTITY_HEADER"]
    );
    assert!(
        !app.contains_key("AZURE_FEDERATED_TOKEN_FILE"),
        "the raw token is not handed to the app: JS SDKs would bypass the sidecar"
    );
    assert_eq!(pod["spec"]["volumes"][0]["name"], "wif-broker-token");
    assert_eq!(
        *w.kube.calls.lock().unwrap(),
        ["legacy/workload-identity-sa"]
    );
    assert_valid(&pod);
    let response = w.review(&again(&review, &pod)).await;
    assert!(response.get("patch").is_none(), "{response}");

    // The same pod when azure-workload-identity's own webhook also ran: its variables stay,
    // with a warning about JavaScript SDKs.
    let mut both = review.clone();
    both["request"]["object"]["spec"]["containers"][0]["env"] = json!([
        {"name": "AZURE_CLIENT_ID", "value": AZWI_CLIENT},
        {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/tokens/azure-identity-token"},
    ]);
    let (pod, response) = w.mutate(&both).await;
    let app = env(container(&pod, "containers", "reporter"));
    assert_eq!(
        app["AZURE_FEDERATED_TOKEN_FILE"],
        "/var/run/secrets/azure/tokens/azure-identity-token"
    );
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{response}"
    );
}

#[tokio::test]
async fn host_network_pods_choose_their_port_and_are_refused_without_one() {
    let w = Webhook::start().await;
    let (pod, _) = w.mutate(&fixture("host-network-pod.json")).await;
    let sidecar = container(&pod, "initContainers", "wif-agent");
    assert!(
        sidecar["args"]
            .as_array()
            .unwrap()
            .contains(&json!("127.0.0.1:15181"))
    );
    assert_eq!(
        env(container(&pod, "containers", "agent"))["IDENTITY_ENDPOINT"],
        "http://127.0.0.1:15181/msi/token"
    );
    assert!(
        sidecar["securityContext"]["privileged"].is_null(),
        "no iptables, no privilege"
    );
    assert_valid(&pod);

    let review = fixture("host-network-pod-without-port.json");
    let response = w.review(&review).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("wif-broker.io/agent-port"), "{message}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let w = Webhook::start().await;
    for (body, code) in [
        ("not json".to_owned(), "invalid_admission_review"),
        (json!({"kind": "Pod"}).to_string(), "invalid_admission_review"),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}).to_string(),
            "invalid_admission_review",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).to_string(),
            "invalid_admission_review",
        ),
        (fixture("deployment.json").to_string(), "not_a_pod"),
    ] {
        let (status, answer) = w.post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"], code, "{answer}");
        assert!(answer["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    }
    // A labelled object that claims to be a pod but has no containers.
    let mut broken = fixture("labelled-pod.json");
    broken["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("containers");
    let (status, answer) = w.post(broken.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "not_a_pod", "{answer}");
    // Anything but CREATE is allowed untouched.
    let mut delete = fixture("labelled-pod.json");
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = delete["request"]["object"].take();
    let response = w.review(&delete).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    // Oversized bodies are refused before parsing.
    let (status, answer) = w.post(vec![b' '; 4 * 1024 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
}

#[tokio::test]
async fn the_webhook_is_off_unless_enabled_and_never_on_the_api_port() {
    let stack = Stack::start().await;
    assert!(stack.broker.webhook_url().is_none(), "no webhook listener");
    let response = stack
        .http
        .post(stack.url("/mutate/v1/pods"))
        .json(&fixture("labelled-pod.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    // Enabled, it has its own listener; the API port still does not serve it.
    let w = Webhook::start().await;
    assert_ne!(w.url(), w.stack.broker.url());
    let response = w
        .http
        .post(w.stack.url("/mutate/v1/pods"))
        .json(&fixture("labelled-pod.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    let response = w.review(&fixture("labelled-pod.json")).await;
    assert_eq!(response["allowed"], true, "{response}");
}
