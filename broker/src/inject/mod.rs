//! Sidecar injection: what the admission webhook (`POST /mutate/v1/pods`, see
//! [`crate::api::mutate`]) does to a pod, as a JSON Patch (RFC 6902).
//!
//! A pod opts in with the label `wif-broker.io/inject: "true"`, or — for drop-in migration
//! from azure-workload-identity — `azure.workload.identity/use: "true"`. It then gets:
//! - the agent (`wif-agent serve`) as a native sidecar: the first `initContainers` entry,
//!   with `restartPolicy: Always`, listening on loopback;
//! - a projected service-account token volume, mounted in the sidecar only;
//! - in every other container (unless listed in the skip annotation) the variables the
//!   Azure SDKs read: `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`,
//!   `AZURE_POD_IDENTITY_AUTHORITY_HOST`, and `AZURE_CLIENT_ID` / `AZURE_TENANT_ID` when
//!   they are known.
//!
//! Rules this module keeps: a variable a container already sets is never overwritten;
//! running it again on its own output adds nothing (the sidecar's port and header secret
//! are read back from the sidecar); no iptables, so `hostNetwork` pods work, but they
//! must choose their loopback port (`wif-broker.io/agent-port`), since every pod on the
//! node shares it; their sidecar declares it (a host port, so the scheduler keeps two such
//! pods apart) and serves only the App Service protocol, since IMDS requests carry no
//! secret and the node's loopback is shared. Containers that use `envFrom` keep their own
//! `AZURE_CLIENT_ID` / `AZURE_TENANT_ID`. `AZURE_FEDERATED_TOKEN_FILE` is never injected,
//! and never removed: a container that sets it gets a warning, because
//! `DefaultAzureCredential` (and JavaScript's `ManagedIdentityCredential`) would then send
//! the token to Entra directly instead of asking the sidecar (docs/kubernetes.md).
//!
//! The `IDENTITY_HEADER` secret is a random value drawn per pod and written as a literal
//! into both the sidecar's and the app containers' environment: nothing has to exist in
//! the pod's namespace beforehand, and the secret is as visible as the pod spec. It guards
//! the App Service protocol against request forgery (SSRF) and against other processes
//! sharing the loopback interface (`hostNetwork` pods, where IMDS is therefore off); it
//! does not hide anything from someone who may read the pod. Within an ordinary pod,
//! containers share the pod's loopback, so a container listed in the skip annotation can
//! still reach the sidecar's IMDS endpoint: skipping a container keeps variables out of
//! it, it is not an isolation boundary.
//!
//! Building the patch ([`mutate`]) is pure: the caller supplies the service account's
//! annotations (read by [`kube`]) and the random secret. It never panics on odd input; a
//! pod it cannot understand is an error.

pub mod kube;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wif_config::WebhookConfig;

/// The label that asks for injection.
pub const INJECT_LABEL: &str = "wif-broker.io/inject";
/// azure-workload-identity's label, honoured for drop-in migration.
pub const AZWI_USE_LABEL: &str = "azure.workload.identity/use";
/// Pod annotation choosing the sidecar's loopback port (required with `hostNetwork`).
pub const PORT_ANNOTATION: &str = "wif-broker.io/agent-port";
/// Pod annotation naming the broker identity the sidecar asks for by default.
pub const IDENTITY_ANNOTATION: &str = "wif-broker.io/identity";
/// Pod or service-account annotations giving `AZURE_CLIENT_ID` / `AZURE_TENANT_ID`.
pub const CLIENT_ID_ANNOTATION: &str = "wif-broker.io/client-id";
pub const TENANT_ID_ANNOTATION: &str = "wif-broker.io/tenant-id";
/// azure-workload-identity's service-account annotations.
pub const AZWI_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
pub const AZWI_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// azure-workload-identity's skip annotation (names separated by `;`).
pub const AZWI_SKIP_ANNOTATION: &str = "azure.workload.identity/skip-containers";
/// Set on every pod the webhook mutated: the sidecar's port.
pub const INJECTED_ANNOTATION: &str = "wif-broker.io/injected-agent-port";

/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "wif-agent";
/// The projected token volume's name.
pub const TOKEN_VOLUME: &str = "wif-broker-token";
/// The token file's name inside the volume.
pub const TOKEN_FILE: &str = "token";
/// The agent binary's path in the image (see the Dockerfile).
pub const AGENT_BINARY: &str = "/usr/local/bin/wif-agent";
/// The non-root user the sidecar runs as (distroless `nonroot`).
pub const SIDECAR_UID: u32 = 65532;

/// Why a pod cannot be mutated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The object is not a pod (no `spec.containers` list).
    #[error("the object is not a Pod: {0}")]
    NotAPod(String),
    /// `hostNetwork` pods share the node's loopback: a default port would collide.
    #[error(
        "the pod uses hostNetwork, so its wif-agent sidecar would share the node's loopback \
         interface with every other host-network pod; choose a port free on the node with the \
         annotation {PORT_ANNOTATION}: \"<port>\""
    )]
    HostNetworkNeedsPort,
    /// The port annotation is not a port.
    #[error("annotation {PORT_ANNOTATION} is {0:?}, not a port number from 1 to 65535")]
    BadPort(String),
    /// An app container already declares the sidecar's port.
    #[error(
        "container {container:?} declares port {port}, which the wif-agent sidecar would \
         listen on; choose another with the annotation {PORT_ANNOTATION}"
    )]
    PortInUse { container: String, port: u16 },
}

impl InjectError {
    /// A stable snake_case code.
    pub fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            InjectError::NotAPod(_) => ErrorCode::NotAPod,
            InjectError::HostNetworkNeedsPort => ErrorCode::HostNetworkNeedsPort,
            InjectError::BadPort(_) => ErrorCode::InvalidAgentPort,
            InjectError::PortInUse { .. } => ErrorCode::AgentPortInUse,
        }
    }
}

/// Why the pod opted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `wif-broker.io/inject: "true"`.
    Label,
    /// `azure.workload.identity/use: "true"`.
    AzureWorkloadIdentity,
}

/// The sidecar's settings, resolved from `[webhook]` at start-up.
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub broker_url: String,
    /// PEM roots for the broker, passed to the sidecar as `WIF_AGENT_CA_PEM`.
    pub broker_ca_pem: Option<String>,
    pub agent_image: String,
    pub agent_image_pull_policy: String,
    pub agent_port: u16,
    pub agent_cpu_request: String,
    pub agent_memory_request: String,
    pub agent_memory_limit: String,
    pub token_audience: String,
    pub token_expiration_secs: u64,
    pub token_mount_path: String,
    pub skip_containers_annotation: String,
    pub default_tenant_id: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("broker_url", &self.broker_url)
            .field("agent_image", &self.agent_image)
            .field("agent_port", &self.agent_port)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The settings in `config`, with the CA file's contents (read by the caller).
    pub fn from_config(config: &WebhookConfig, broker_ca_pem: Option<String>) -> Self {
        Self {
            broker_url: config.broker_url.trim_end_matches('/').to_owned(),
            broker_ca_pem,
            agent_image: config.agent_image.clone(),
            agent_image_pull_policy: config.agent_image_pull_policy.clone(),
            agent_port: config.agent_port,
            agent_cpu_request: config.agent_cpu_request.clone(),
            agent_memory_request: config.agent_memory_request.clone(),
            agent_memory_limit: config.agent_memory_limit.clone(),
            token_audience: config.token_audience.clone(),
            token_expiration_secs: config.token_expiration_secs,
            token_mount_path: config.token_mount_path.trim_end_matches('/').to_owned(),
            skip_containers_annotation: config.skip_containers_annotation.clone(),
            default_tenant_id: config.default_tenant_id.clone(),
        }
    }
}

/// What the webhook learned about the pod's service account (its annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccountFacts {
    pub annotations: BTreeMap<String, String>,
}

/// The result: JSON Patch operations (empty: leave the pod alone) and warnings for the
/// user (`kubectl` prints them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mutation {
    pub patch: Vec<Value>,
    pub warnings: Vec<String>,
}

/// Escapes one JSON Pointer segment (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn label<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    str_at(pod, &format!("/metadata/labels/{}", escape_pointer(key)))
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    str_at(
        pod,
        &format!("/metadata/annotations/{}", escape_pointer(key)),
    )
}

/// Whether (and why) the pod asked for injection.
pub fn trigger(pod: &Value) -> Option<Trigger> {
    if label(pod, INJECT_LABEL) == Some("true") {
        Some(Trigger::Label)
    } else if label(pod, AZWI_USE_LABEL) == Some("true") {
        Some(Trigger::AzureWorkloadIdentity)
    } else {
        None
    }
}

/// The service account the pod runs as (`default` when it names none).
pub fn service_account(pod: &Value) -> &str {
    str_at(pod, "/spec/serviceAccountName")
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// A sidecar this webhook injected earlier: its port and header secret.
struct Existing {
    port: u16,
    header: String,
}

fn existing_sidecar(pod: &Value) -> Option<Existing> {
    let sidecar = pod
        .pointer("/spec/initContainers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == SIDECAR_NAME)?;
    let args: Vec<&str> = sidecar["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let listen = args
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| args.get(i + 1))?;
    let port = listen.rsplit_once(':')?.1.parse().ok()?;
    let header = env_value(sidecar, "WIF_AGENT_IDENTITY_HEADER")?.to_owned();
    Some(Existing { port, header })
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

fn has_env(container: &Value, name: &str) -> bool {
    container["env"]
        .as_array()
        .is_some_and(|env| env.iter().any(|e| e["name"] == name))
}

fn env(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn agent_port(pod: &Value, settings: &Settings) -> Result<u16, InjectError> {
    match annotation(pod, PORT_ANNOTATION) {
        Some(raw) => match raw.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(InjectError::BadPort(raw.chars().take(32).collect())),
        },
        None if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) => {
            Err(InjectError::HostNetworkNeedsPort)
        }
        None => Ok(settings.agent_port),
    }
}

fn skipped(pod: &Value, settings: &Settings) -> Vec<String> {
    [
        settings.skip_containers_annotation.as_str(),
        AZWI_SKIP_ANNOTATION,
    ]
    .iter()
    .filter_map(|key| annotation(pod, key))
    .flat_map(|list| list.split([',', ';']))
    .map(|name| name.trim().to_owned())
    .filter(|name| !name.is_empty())
    .collect()
}

/// The first non-empty value among the pod's annotations, then the service account's.
fn identity_fact(pod: &Value, sa: &ServiceAccountFacts, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| annotation(pod, key).filter(|v| !v.trim().is_empty()))
        .or_else(|| {
            keys.iter()
                .find_map(|key| sa.annotations.get(*key).filter(|v| !v.trim().is_empty()))
                .map(String::as_str)
        })
        .map(|v| v.trim().to_owned())
}

fn is_host_network(pod: &Value) -> bool {
    pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true))
}

fn sidecar(
    settings: &Settings,
    port: u16,
    header: &str,
    identity: Option<&str>,
    host_network: bool,
) -> Value {
    let mut vars = vec![env("WIF_AGENT_IDENTITY_HEADER", header)];
    if host_network {
        // On the node's loopback, anything on the node could reach IMDS, which carries no
        // secret: only the header-guarded App Service protocol is served.
        vars.push(env("WIF_AGENT_IMDS", "false"));
    }
    if let Some(pem) = &settings.broker_ca_pem {
        vars.push(env("WIF_AGENT_CA_PEM", pem));
    }
    if let Some(identity) = identity {
        vars.push(env("WIF_AGENT_IDENTITY", identity));
    }
    let mut sidecar = json!({
        "name": SIDECAR_NAME,
        "image": settings.agent_image,
        "imagePullPolicy": settings.agent_image_pull_policy,
        "restartPolicy": "Always",
        "command": [AGENT_BINARY],
        "args": [
            "serve",
            "--broker", settings.broker_url,
            "--token-file", format!("{}/{TOKEN_FILE}", settings.token_mount_path),
            "--listen", format!("127.0.0.1:{port}"),
        ],
        "env": vars,
        "volumeMounts": [{
            "name": TOKEN_VOLUME,
            "mountPath": settings.token_mount_path,
            "readOnly": true,
        }],
        "resources": {
            "requests": {
                "cpu": settings.agent_cpu_request,
                "memory": settings.agent_memory_request,
            },
            "limits": {"memory": settings.agent_memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if host_network && let Value::Object(map) = &mut sidecar {
        // With hostNetwork the port becomes a host port, so the scheduler keeps two such
        // pods off one node instead of letting the second sidecar fail to bind.
        map.insert(
            "ports".into(),
            json!([{"name": "wif-agent", "containerPort": port, "protocol": "TCP"}]),
        );
    }
    sidecar
}

fn token_volume(settings: &Settings) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "path": TOKEN_FILE,
                    "audience": settings.token_audience,
                    "expirationSeconds": settings.token_expiration_secs,
                },
            }],
        },
    })
}

/// Builds the patch for `pod`. `sa` holds the service account's annotations (empty when
/// they could not be read); `new_secret` draws a header secret for a pod not yet injected.
pub fn mutate(
    pod: &Value,
    settings: &Settings,
    sa: &ServiceAccountFacts,
    new_secret: impl FnOnce() -> String,
) -> Result<Mutation, InjectError> {
    let Some(containers) = pod.pointer("/spec/containers").and_then(Value::as_array) else {
        return Err(InjectError::NotAPod(
            "it has no spec.containers list".into(),
        ));
    };
    if !pod.is_object() || containers.is_empty() {
        return Err(InjectError::NotAPod("it has no containers".into()));
    }
    let mut out = Mutation::default();
    let Some(trigger) = trigger(pod) else {
        return Ok(out);
    };

    // The sidecar: reuse one injected earlier (reinvocation), or add it.
    let (port, header, added) = match existing_sidecar(pod) {
        Some(existing) => (existing.port, existing.header, false),
        None => {
            let port = agent_port(pod, settings)?;
            let init = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for c in containers.iter().chain(init) {
                let declares = c["ports"].as_array().is_some_and(|ports| {
                    ports
                        .iter()
                        .any(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
                });
                if declares {
                    return Err(InjectError::PortInUse {
                        container: c["name"].as_str().unwrap_or_default().to_owned(),
                        port,
                    });
                }
            }
            if pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .is_some_and(|init| init.iter().any(|c| c["name"] == SIDECAR_NAME))
            {
                out.warnings.push(format!(
                    "an init container named {SIDECAR_NAME} exists but was not injected by \
                     wif-broker; the pod was left unchanged"
                ));
                return Ok(out);
            }
            let header = new_secret();
            let identity = annotation(pod, IDENTITY_ANNOTATION).filter(|s| !s.trim().is_empty());
            let sidecar = sidecar(settings, port, &header, identity, is_host_network(pod));
            match pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
            {
                Some(_) => out.patch.push(json!({
                    "op": "add", "path": "/spec/initContainers/0", "value": sidecar,
                })),
                None => out.patch.push(json!({
                    "op": "add", "path": "/spec/initContainers", "value": [sidecar],
                })),
            }
            let volume = token_volume(settings);
            match pod.pointer("/spec/volumes").and_then(Value::as_array) {
                Some(volumes) if volumes.iter().any(|v| v["name"] == TOKEN_VOLUME) => {
                    out.warnings.push(format!(
                        "the pod already has a volume named {TOKEN_VOLUME}; the sidecar mounts it as its token"
                    ));
                }
                Some(_) => out.patch.push(json!({
                    "op": "add", "path": "/spec/volumes/-", "value": volume,
                })),
                None => out.patch.push(json!({
                    "op": "add", "path": "/spec/volumes", "value": [volume],
                })),
            }
            let port_text = port.to_string();
            match pod.pointer("/metadata/annotations").and_then(Value::as_object) {
                Some(_) => out.patch.push(json!({
                    "op": "add",
                    "path": format!("/metadata/annotations/{}", escape_pointer(INJECTED_ANNOTATION)),
                    "value": port_text,
                })),
                None => out.patch.push(json!({
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {INJECTED_ANNOTATION: port_text},
                })),
            }
            (port, header, true)
        }
    };

    // The SDKs' variables, in every container not skipped.
    let client_id = identity_fact(pod, sa, &[CLIENT_ID_ANNOTATION, AZWI_CLIENT_ID_ANNOTATION]);
    let tenant_id = identity_fact(pod, sa, &[TENANT_ID_ANNOTATION, AZWI_TENANT_ID_ANNOTATION])
        .or_else(|| settings.default_tenant_id.clone());
    if trigger == Trigger::AzureWorkloadIdentity && client_id.is_none() {
        out.warnings.push(format!(
            "no {AZWI_CLIENT_ID_ANNOTATION} annotation on service account {:?}: AZURE_CLIENT_ID \
             is not set, so the broker picks the identity from the token alone",
            service_account(pod)
        ));
    }
    let base = format!("http://127.0.0.1:{port}");
    let mut wanted = vec![
        env("IDENTITY_ENDPOINT", &format!("{base}/msi/token")),
        env("IDENTITY_HEADER", &header),
    ];
    if !is_host_network(pod) {
        wanted.push(env("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base));
    }
    if let Some(client_id) = &client_id {
        wanted.push(env("AZURE_CLIENT_ID", client_id));
    }
    if let Some(tenant_id) = &tenant_id {
        wanted.push(env("AZURE_TENANT_ID", tenant_id));
    }
    let skip = skipped(pod, settings);
    for list in ["initContainers", "containers"] {
        let Some(entries) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        // A sidecar added by this patch shifts the existing init containers by one.
        let shift = usize::from(added && list == "initContainers");
        for (i, container) in entries.iter().enumerate() {
            let name = container["name"].as_str().unwrap_or_default();
            if name == SIDECAR_NAME || skip.iter().any(|s| s == name) {
                continue;
            }
            let index = i + shift;
            // Values from `envFrom` lose to `env`: the identity ids, the ones a ConfigMap
            // plausibly holds, are left to it rather than overwritten.
            let from_env_from = container["envFrom"]
                .as_array()
                .is_some_and(|sources| !sources.is_empty());
            let missing: Vec<&Value> = wanted
                .iter()
                .filter(|e| {
                    let name = e["name"].as_str().unwrap_or_default();
                    let left_to_env_from =
                        from_env_from && matches!(name, "AZURE_CLIENT_ID" | "AZURE_TENANT_ID");
                    !has_env(container, name) && !left_to_env_from
                })
                .collect();
            if from_env_from && (client_id.is_some() || tenant_id.is_some()) {
                out.warnings.push(format!(
                    "container {name:?} uses envFrom: AZURE_CLIENT_ID and AZURE_TENANT_ID are \
                     not added to it, so values from its ConfigMaps or Secrets are not overridden"
                ));
            }
            if env_value(container, "IDENTITY_HEADER").is_some_and(|v| v != header) {
                out.warnings.push(format!(
                    "container {name:?} sets its own IDENTITY_HEADER, which the wif-agent sidecar will refuse"
                ));
            }
            if has_env(container, "AZURE_FEDERATED_TOKEN_FILE") {
                out.warnings.push(format!(
                    "container {name:?} sets AZURE_FEDERATED_TOKEN_FILE: DefaultAzureCredential \
                     (and JavaScript's ManagedIdentityCredential) will send that token to Entra \
                     directly instead of asking the wif-agent sidecar"
                ));
            }
            if missing.is_empty() {
                continue;
            }
            if container["env"].is_array() {
                for e in missing {
                    out.patch.push(json!({
                        "op": "add",
                        "path": format!("/spec/{list}/{index}/env/-"),
                        "value": e,
                    }));
                }
            } else {
                out.patch.push(json!({
                    "op": "add",
                    "path": format!("/spec/{list}/{index}/env"),
                    "value": missing,
                }));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn settings() -> Settings {
        Settings::from_config(
            &WebhookConfig {
                enabled: true,
                broker_url: "https://wif-broker.wif-system.svc:8443/".into(),
                agent_image: "registry.example/wif-broker:0.1.0".into(),
                ..Default::default()
            },
            None,
        )
    }

    fn pod(labels: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "api", "namespace": "payments", "labels": labels},
            "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "app:1"}]},
        })
    }

    fn apply(pod: &Value, patch: &[Value]) -> Value {
        // A tiny "add"-only applier, enough for what mutate emits.
        let mut pod = pod.clone();
        for op in patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = pod.pointer_mut(parent).unwrap();
            match target {
                Value::Array(items) if last == "-" => items.push(op["value"].clone()),
                Value::Array(items) => items.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(map) => {
                    map.insert(last, op["value"].clone());
                }
                _ => panic!("cannot add at {path}"),
            }
        }
        pod
    }

    fn env_of(container: &Value) -> BTreeMap<String, String> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap_or("<from>").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(
            escape_pointer("wif-broker.io/inject"),
            "wif-broker.io~1inject"
        );
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn an_unlabelled_pod_is_left_alone() {
        let m = mutate(
            &pod(json!({"app": "api"})),
            &settings(),
            &Default::default(),
            || panic!("no secret needed"),
        )
        .unwrap();
        assert_eq!(m, Mutation::default());
        let m = mutate(
            &pod(json!({INJECT_LABEL: "false"})),
            &settings(),
            &Default::default(),
            || panic!("no secret needed"),
        )
        .unwrap();
        assert!(m.patch.is_empty());
    }

    #[test]
    fn a_labelled_pod_gets_the_sidecar_volume_and_variables() {
        let p = pod(json!({INJECT_LABEL: "true"}));
        let m = mutate(&p, &settings(), &Default::default(), || "s".repeat(64)).unwrap();
        let out = apply(&p, &m.patch);
        let sidecar = &out["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], SIDECAR_NAME);
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(
            sidecar["args"],
            json!([
                "serve",
                "--broker",
                "https://wif-broker.wif-system.svc:8443",
                "--token-file",
                "/var/run/secrets/wif-broker.io/serviceaccount/token",
                "--listen",
                "127.0.0.1:8181"
            ])
        );
        assert_eq!(env_of(sidecar)["WIF_AGENT_IDENTITY_HEADER"], "s".repeat(64));
        let volume = &out["spec"]["volumes"][0];
        assert_eq!(volume["name"], TOKEN_VOLUME);
        assert_eq!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
        let app = env_of(&out["spec"]["containers"][0]);
        assert_eq!(app["IDENTITY_ENDPOINT"], "http://127.0.0.1:8181/msi/token");
        assert_eq!(app["IDENTITY_HEADER"], "s".repeat(64));
        assert_eq!(
            app["AZURE_POD_IDENTITY_AUTHORITY_HOST"],
            "http://127.0.0.1:8181"
        );
        assert!(!app.contains_key("AZURE_CLIENT_ID"));
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "8181");
        // The app container never mounts the token.
        assert!(out["spec"]["containers"][0]["volumeMounts"].is_null());

        let again = mutate(&out, &settings(), &Default::default(), || panic!("reused")).unwrap();
        assert_eq!(
            again,
            Mutation::default(),
            "a second invocation adds nothing"
        );
    }

    #[test]
    fn existing_variables_are_never_overwritten() {
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["spec"]["containers"][0]["env"] =
            json!([{"name": "AZURE_CLIENT_ID", "value": "mine"}, {"name": "X", "value": "y"}]);
        let sa = ServiceAccountFacts {
            annotations: [(CLIENT_ID_ANNOTATION.to_owned(), "theirs".to_owned())].into(),
        };
        let m = mutate(&p, &settings(), &sa, || "h".repeat(32)).unwrap();
        let out = apply(&p, &m.patch);
        let app = env_of(&out["spec"]["containers"][0]);
        assert_eq!(app["AZURE_CLIENT_ID"], "mine");
        assert_eq!(app["X"], "y");
        assert_eq!(app["IDENTITY_HEADER"], "h".repeat(32));
    }

    #[test]
    fn init_containers_shift_behind_the_sidecar_and_skipped_containers_get_nothing() {
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["metadata"]["annotations"] =
            json!({"wif-broker.io/skip-containers": "istio-proxy, debug"});
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
        p["spec"]["containers"] = json!([
            {"name": "app", "image": "a:1"},
            {"name": "istio-proxy", "image": "p:1"},
            {"name": "debug", "image": "d:1"},
        ]);
        let m = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap();
        let out = apply(&p, &m.patch);
        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], SIDECAR_NAME);
        assert_eq!(init[1]["name"], "migrate");
        assert!(env_of(&init[1]).contains_key("IDENTITY_ENDPOINT"));
        assert!(env_of(&out["spec"]["containers"][0]).contains_key("IDENTITY_HEADER"));
        assert!(out["spec"]["containers"][1]["env"].is_null());
        assert!(out["spec"]["containers"][2]["env"].is_null());
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "8181");
        let again = mutate(&out, &settings(), &Default::default(), || panic!("reused")).unwrap();
        assert!(again.patch.is_empty(), "{:?}", again.patch);
    }

    #[test]
    fn a_container_added_after_injection_gets_the_same_secret_and_port() {
        let p = pod(json!({INJECT_LABEL: "true"}));
        let m = mutate(&p, &settings(), &Default::default(), || "first".repeat(8)).unwrap();
        let mut out = apply(&p, &m.patch);
        out["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "late", "image": "l:1"}));
        let m = mutate(&out, &settings(), &Default::default(), || panic!("reused")).unwrap();
        assert_eq!(m.patch.len(), 1, "{:?}", m.patch);
        let out = apply(&out, &m.patch);
        let late = env_of(&out["spec"]["containers"][1]);
        assert_eq!(late["IDENTITY_HEADER"], "first".repeat(8));
        assert_eq!(late["IDENTITY_ENDPOINT"], "http://127.0.0.1:8181/msi/token");
    }

    #[test]
    fn azure_workload_identity_pods_take_ids_from_the_service_account() {
        let p = pod(json!({AZWI_USE_LABEL: "true"}));
        let sa = ServiceAccountFacts {
            annotations: [
                (AZWI_CLIENT_ID_ANNOTATION.to_owned(), "client".to_owned()),
                (AZWI_TENANT_ID_ANNOTATION.to_owned(), "tenant".to_owned()),
            ]
            .into(),
        };
        let m = mutate(&p, &settings(), &sa, || "h".repeat(32)).unwrap();
        let app = env_of(&apply(&p, &m.patch)["spec"]["containers"][0]);
        assert_eq!(app["AZURE_CLIENT_ID"], "client");
        assert_eq!(app["AZURE_TENANT_ID"], "tenant");
        assert!(!app.contains_key("AZURE_FEDERATED_TOKEN_FILE"));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);

        let m = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap();
        assert!(
            m.warnings[0].contains(AZWI_CLIENT_ID_ANNOTATION),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn a_federated_token_file_is_kept_with_a_warning() {
        let mut p = pod(json!({AZWI_USE_LABEL: "true"}));
        p["spec"]["containers"][0]["env"] =
            json!([{"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/x"}]);
        let sa = ServiceAccountFacts {
            annotations: [(AZWI_CLIENT_ID_ANNOTATION.to_owned(), "c".to_owned())].into(),
        };
        let m = mutate(&p, &settings(), &sa, || "h".repeat(32)).unwrap();
        let app = env_of(&apply(&p, &m.patch)["spec"]["containers"][0]);
        assert_eq!(app["AZURE_FEDERATED_TOKEN_FILE"], "/var/run/x");
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("AZURE_FEDERATED_TOKEN_FILE"))
        );
    }

    #[test]
    fn host_network_pods_must_choose_a_port() {
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["spec"]["hostNetwork"] = json!(true);
        let err = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap_err();
        assert_eq!(err, InjectError::HostNetworkNeedsPort);
        p["metadata"]["annotations"] = json!({PORT_ANNOTATION: "15081"});
        let m = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap();
        let out = apply(&p, &m.patch);
        assert_eq!(
            out["spec"]["initContainers"][0]["args"][6],
            "127.0.0.1:15081"
        );
        assert_eq!(
            env_of(&out["spec"]["containers"][0])["IDENTITY_ENDPOINT"],
            "http://127.0.0.1:15081/msi/token"
        );
        // The node's loopback is shared: no secret-less IMDS, and the port is declared.
        let app = env_of(&out["spec"]["containers"][0]);
        assert!(
            !app.contains_key("AZURE_POD_IDENTITY_AUTHORITY_HOST"),
            "{app:?}"
        );
        let sidecar = &out["spec"]["initContainers"][0];
        assert_eq!(env_of(sidecar)["WIF_AGENT_IMDS"], "false");
        assert_eq!(sidecar["ports"][0]["containerPort"], 15081);
        p["metadata"]["annotations"] = json!({PORT_ANNOTATION: "http"});
        assert_eq!(
            mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap_err(),
            InjectError::BadPort("http".into())
        );
    }

    #[test]
    fn a_port_the_app_declares_is_refused() {
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8181}]);
        let err = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap_err();
        assert_eq!(err.code(), "agent_port_in_use");
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["spec"]["initContainers"] =
            json!([{"name": "proxy", "image": "envoy", "ports": [{"containerPort": 8181}]}]);
        let err = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap_err();
        assert_eq!(err.code(), "agent_port_in_use", "init containers count too");
    }

    #[test]
    fn identity_ids_from_env_from_are_not_overridden() {
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["metadata"]["annotations"] =
            json!({CLIENT_ID_ANNOTATION: "11111111-1111-4111-8111-111111111111"});
        p["spec"]["containers"][0]["envFrom"] = json!([{"configMapRef": {"name": "azure"}}]);
        let m = mutate(&p, &settings(), &Default::default(), || "h".repeat(32)).unwrap();
        let out = apply(&p, &m.patch);
        let app = env_of(&out["spec"]["containers"][0]);
        assert!(!app.contains_key("AZURE_CLIENT_ID"), "{app:?}");
        assert!(app.contains_key("IDENTITY_ENDPOINT"));
        assert!(
            m.warnings.iter().any(|w| w.contains("envFrom")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn objects_that_are_not_pods_are_errors() {
        for odd in [
            json!(null),
            json!([]),
            json!({"spec": {}}),
            json!({"spec": {"containers": []}}),
        ] {
            let err =
                mutate(&odd, &settings(), &Default::default(), || "h".repeat(32)).unwrap_err();
            assert_eq!(err.code(), "not_a_pod");
        }
    }

    #[test]
    fn the_ca_and_identity_reach_the_sidecar() {
        let mut s = settings();
        s.broker_ca_pem =
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
        let mut p = pod(json!({INJECT_LABEL: "true"}));
        p["metadata"]["annotations"] = json!({IDENTITY_ANNOTATION: "payments"});
        let m = mutate(&p, &s, &Default::default(), || "h".repeat(32)).unwrap();
        let sidecar = env_of(&apply(&p, &m.patch)["spec"]["initContainers"][0]);
        assert!(sidecar["WIF_AGENT_CA_PEM"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(sidecar["WIF_AGENT_IDENTITY"], "payments");
    }
}
