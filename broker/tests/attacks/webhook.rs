//! A stranger asks the admission webhook about service accounts. The webhook's answers
//! carry each service account's client and tenant ids (read from the Kubernetes API), so
//! it must not be served on the API port, where anyone who reaches the broker can call
//! it: it has its own TLS listener (`[webhook] listen`), which accepts JSON AdmissionReview
//! v1 bodies only (docs/kubernetes.md).

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use crate::support::*;

/// What the (fake) Kubernetes API says service account `payments/api` is annotated with.
const SA_CLIENT: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
const SA_TENANT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// A stand-in for the Kubernetes API serving one annotated service account, recording
/// every lookup.
async fn fake_kube() -> (String, Arc<Mutex<Vec<String>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
            get(
                |State(calls): State<Arc<Mutex<Vec<String>>>>,
                 Path((namespace, name)): Path<(String, String)>| async move {
                    calls.lock().unwrap().push(format!("{namespace}/{name}"));
                    Json(json!({
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": name, "namespace": namespace, "annotations": {
                            "azure.workload.identity/client-id": SA_CLIENT,
                            "azure.workload.identity/tenant-id": SA_TENANT,
                        }},
                    }))
                },
            ),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// An AdmissionReview for a pod of `payments/api` that opted in to injection.
fn review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c4d8e2f1-7a3b-4c5d-9e6f-0a1b2c3d4e5f",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "payments",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "api", "namespace": "payments",
                    "labels": {"azure.workload.identity/use": "true"}},
                "spec": {
                    "serviceAccountName": "api",
                    "containers": [{"name": "app", "image": "registry.example.com/app:1"}],
                },
            },
        },
    })
}

struct Hooked {
    broker: Broker,
    /// `https://127.0.0.1:PORT` of the webhook's own listener.
    webhook: String,
    pki: TestPki,
    kube_calls: Arc<Mutex<Vec<String>>>,
    _dir: BrokerDir,
    _up: Upstreams,
}

/// A broker with the webhook enabled on its own TLS listener; the API port is plain HTTP.
async fn hooked() -> Hooked {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let pki = TestPki::new();
    let (cert, key) = pki.write(&dir);
    std::fs::write(dir.path("kube-token"), "kube-token\n").unwrap();
    let (kube, kube_calls) = fake_kube().await;
    let port = free_port();
    let extra = format!(
        r#"[webhook]
enabled = true
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
broker_url = "https://wif-broker.wif-system.svc:8443"
agent_image = "registry.example.com/wif/wif-broker:0.1.0"
kube_api_url = "{kube}"
kube_token_file = "{token}"
kube_ca_file = "{no_ca}"
max_body_bytes = 65536
"#,
        cert = cert.display(),
        key = key.display(),
        token = dir.path("kube-token").display(),
        no_ca = dir.path("no-such-ca.crt").display(),
    );
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    Hooked {
        broker,
        webhook: format!("https://127.0.0.1:{port}"),
        pki,
        kube_calls,
        _dir: dir,
        _up: up,
    }
}

impl Hooked {
    async fn post_webhook(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut request = self
            .pki
            .client()
            .post(format!("{}/mutate/v1/pods", self.webhook))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        send(request).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_port_does_not_answer_admission_reviews() {
    let h = hooked().await;
    let http = client();
    let stranger = send(
        http.post(format!("{}/mutate/v1/pods", h.broker.url()))
            .json(&review()),
    )
    .await;
    assert_eq!(stranger.status, 404, "{stranger:?}");
    assert_eq!(stranger.error(), "not_found", "{stranger:?}");
    assert!(!stranger.text.contains(SA_CLIENT), "{stranger:?}");
    assert!(
        h.kube_calls.lock().unwrap().is_empty(),
        "a stranger's review must not make the broker look up a service account"
    );
    // Nor is it served under another method or with a trailing slash.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let other = send(
            http.request(method.clone(), format!("{}/mutate/v1/pods", h.broker.url()))
                .json(&review()),
        )
        .await;
        assert_eq!(other.status, 404, "{method}: {other:?}");
    }

    // The webhook's own listener answers the API server's call, with the ids the stranger
    // was after: the refusal above is not a broken webhook.
    let real = h
        .post_webhook(Some("application/json"), review().to_string())
        .await;
    assert_eq!(real.status, 200, "{real:?}\n{}", h.broker.output());
    assert_eq!(real.body["response"]["allowed"], true, "{real:?}");
    let patch = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            real.body["response"]["patch"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(patch.contains(SA_CLIENT), "{patch}");
    assert_eq!(*h.kube_calls.lock().unwrap(), ["payments/api"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_listener_speaks_tls_only_and_serves_nothing_else() {
    let h = hooked().await;
    // Plain HTTP to the webhook port gets no review.
    let plain = client()
        .post(format!(
            "{}/mutate/v1/pods",
            h.webhook.replace("https://", "http://")
        ))
        .json(&review())
        .send()
        .await;
    if let Ok(response) = plain {
        let got = answer(response).await;
        assert_ne!(got.status, 200, "{got:?}");
        assert!(!got.text.contains(SA_CLIENT), "{got:?}");
    }
    // The API's routes are not on the webhook listener.
    let https = h.pki.client();
    for path in [
        "/v1/identities",
        "/v1/token",
        "/metrics",
        "/readyz",
        "/openapi.json",
        "/.well-known/openid-configuration",
        "/ui/",
    ] {
        let got = send(
            https
                .get(format!("{}{path}", h.webhook))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(got.status, 404, "{path}: {got:?}");
        assert_eq!(got.error(), "not_found", "{path}: {got:?}");
    }
    let health = send(https.get(format!("{}/healthz", h.webhook))).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(h.kube_calls.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_listener_refuses_what_is_not_an_admission_review() {
    let h = hooked().await;
    let review = review().to_string();
    // Not JSON by its media type: refused before the body is read.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
    ] {
        let got = h.post_webhook(content_type, review.clone()).await;
        assert_eq!(got.status, 415, "{content_type:?}: {got:?}");
        assert_eq!(got.error(), "unsupported_media_type", "{got:?}");
        assert!(!got.text.contains(SA_CLIENT));
    }
    // JSON that is not an AdmissionReview v1 for a Pod.
    let secret_review = {
        let mut r = serde_json::from_str::<Value>(&review).unwrap();
        r["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
        r
    };
    for (body, code) in [
        ("not json".to_owned(), "invalid_admission_review"),
        (
            json!({"kind": "Pod"}).to_string(),
            "invalid_admission_review",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                "request": {"uid": "x"}})
            .to_string(),
            "invalid_admission_review",
        ),
        (secret_review.to_string(), "not_a_pod"),
    ] {
        let got = h.post_webhook(Some("application/json"), body.clone()).await;
        assert_eq!(got.status, 400, "{body}: {got:?}");
        assert_eq!(got.error(), code, "{got:?}");
        assert!(
            got.body["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    // A kind name as long as the body allows is not echoed whole.
    let mut long_kind = serde_json::from_str::<Value>(&review).unwrap();
    long_kind["request"]["kind"]["kind"] = json!("K".repeat(60_000));
    let got = h
        .post_webhook(Some("application/json"), long_kind.to_string())
        .await;
    assert_eq!(got.status, 400, "{got:?}");
    assert!(got.text.len() < 2_000, "{} bytes echoed", got.text.len());
    // Larger than [webhook] max_body_bytes (64 KiB here).
    let got = h
        .post_webhook(Some("application/json"), vec![b' '; 200 * 1024])
        .await;
    assert_eq!(got.status, 413, "{got:?}");
    assert_eq!(got.error(), "body_too_large", "{got:?}");
    // Only POST.
    let got = send(h.pki.client().get(format!("{}/mutate/v1/pods", h.webhook))).await;
    assert_eq!(got.status, 405, "{got:?}");
    assert!(
        h.kube_calls.lock().unwrap().is_empty(),
        "nothing refused reached the Kubernetes API"
    );
}
