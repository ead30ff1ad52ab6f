//! Faithful stand-ins for real issuers at their real URLs, and the broker in front of them.
//!
//! A real deployment reaches `https://token.actions.githubusercontent.com` over the
//! internet, often through an egress proxy that terminates nothing. Here the internet is a
//! [`Farm`]: one TLS listener on loopback, with a certificate for every issuer's host name
//! signed by a throwaway CA, serving each issuer's discovery document and JWKS at the paths
//! that issuer documents. The broker — the real `wif-broker serve` process — reaches it the
//! way a deployment behind a proxy does: `HTTPS_PROXY` names a CONNECT [`Proxy`] that
//! tunnels each issuer's host to the farm, and `SSL_CERT_FILE` holds the CA. Nothing in the
//! broker's configuration is what a real deployment would not write: the credentials name
//! the issuers' real URLs, and `[[issuers]]` entries appear only where the issuer's own
//! documentation requires one (Google's keys on another host, a private cluster's keys).
//!
//! Entra is the emulator (`wif_broker::dev::entra`); every identity uses the broker's own
//! assertion (`assertion = "broker"`), the way issuers Entra does not federate with (ES256,
//! ES384, keys on another host, no `iat`) reach Entra through the broker.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wif_broker::clock::Clock;
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator};
use wif_broker::dev::jwt::{KeyKind, SigningKey, b64url};

use crate::support::{self, Answer, Broker, BrokerDir, TestPki};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const ARM: &str = "https://management.azure.com/.default";
/// The description of `no_matching_credential`.
pub const NO_MATCH: &str = "no federated credential matches this token";
/// The audience Entra expects, and that the broker's credentials default to.
pub const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Seconds since the epoch, as the broker's clock reads them.
pub fn now() -> u64 {
    wif_broker::clock::SystemClock.now()
}

/// The JOSE header members an issuer writes besides `alg` (each writes `kid`).
#[derive(Clone, Copy, Debug)]
pub enum Header {
    /// `{"alg","kid"}`: Kubernetes service-account tokens.
    Kid,
    /// `{"alg","kid","typ":"JWT"}`.
    KidTyp,
    /// `{"alg","kid","typ":"JWT","x5t"}`: GitHub, Entra v1 (there `x5t` equals `kid`).
    KidTypX5t,
}

/// How an issuer writes each key of its JWKS.
#[derive(Clone, Copy, Debug)]
pub enum JwkStyle {
    /// `kty`, key material, `kid`, `use: sig`, `alg`.
    WithAlg,
    /// Entra: `kty`, `use`, `kid`, `x5t`, key material and the v2.0 `issuer`; no `alg`.
    Entra,
    /// SPIRE's discovery provider and AWS: `kty`, `kid`, key material, `use`; no `alg`.
    NoAlg,
}

/// One issuer as its documentation describes it.
pub struct Issuer {
    /// `iss`, exactly as its tokens carry it.
    pub iss: String,
    /// Where its discovery document is served (`None`: a private cluster that has none
    /// the broker can reach).
    pub discovery: Option<String>,
    pub jwks_uri: String,
    pub keys: Vec<SigningKey>,
    pub header: Header,
    pub jwk_style: JwkStyle,
}

impl Issuer {
    /// An issuer whose discovery document is at `{iss}/.well-known/openid-configuration`
    /// (a trailing `/` of `iss` is not doubled) and whose keys are at `jwks_uri`.
    pub fn new(
        iss: &str,
        jwks_uri: &str,
        kinds: &[KeyKind],
        header: Header,
        style: JwkStyle,
    ) -> Self {
        let keys = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let kid = b64url(&digest(format!("{iss}#{i}").as_bytes())[..16]);
                SigningKey::generate(*kind, &kid).unwrap()
            })
            .collect();
        Self {
            discovery: Some(format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            )),
            iss: iss.into(),
            jwks_uri: jwks_uri.into(),
            keys,
            header,
            jwk_style: style,
        }
    }

    /// Signs `claims` with the first key, under this issuer's header.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with(0, claims)
    }

    /// Signs `claims` with key `index`, under this issuer's header.
    pub fn mint_with(&self, index: usize, claims: &Value) -> String {
        let key = &self.keys[index];
        let mut header = json!({ "alg": key.alg(), "kid": key.kid() });
        match self.header {
            Header::Kid => {}
            Header::KidTyp => header["typ"] = json!("JWT"),
            Header::KidTypX5t => {
                header["typ"] = json!("JWT");
                header["x5t"] = json!(x5t(key));
            }
        }
        key.sign_with_header(&header, claims).unwrap()
    }

    /// The JWKS this issuer publishes.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|key| {
                let mut jwk = key.public_jwk();
                match self.jwk_style {
                    JwkStyle::WithAlg => {}
                    JwkStyle::Entra => {
                        jwk.as_object_mut().unwrap().remove("alg");
                        jwk["x5t"] = json!(x5t(key));
                        jwk["issuer"] = json!(self.iss);
                    }
                    JwkStyle::NoAlg => {
                        jwk.as_object_mut().unwrap().remove("alg");
                    }
                }
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The discovery document, with the members the broker reads and those it ignores.
    pub fn discovery_document(&self) -> Value {
        let algs: HashSet<&str> = self.keys.iter().map(SigningKey::alg).collect();
        let mut algs: Vec<&str> = algs.into_iter().collect();
        algs.sort_unstable();
        json!({
            "issuer": self.iss,
            "jwks_uri": self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
            "id_token_signing_alg_values_supported": algs,
            "scopes_supported": ["openid"],
        })
    }
}

/// A certificate thumbprint-like value for `x5t` (the stand-ins publish no certificates).
fn x5t(key: &SigningKey) -> String {
    b64url(&digest(key.kid().as_bytes())[..20])
}

fn digest(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[derive(Clone, Default)]
struct Documents {
    /// `https://host[:port]/path` → JSON answer.
    by_url: Arc<Mutex<HashMap<String, Value>>>,
    /// Every URL asked for, in order.
    asked: Arc<Mutex<Vec<String>>>,
}

/// The issuers' internet: one TLS listener answering for every issuer host.
pub struct Farm {
    pub addr: SocketAddr,
    pub pki: TestPki,
    documents: Documents,
    hosts: HashSet<String>,
    _dir: tempfile::TempDir,
}

impl Farm {
    /// Serves `issuers` (discovery and JWKS where each publishes them), with a certificate
    /// for each of their hosts and `extra_hosts`.
    pub async fn start(issuers: &[&Issuer], extra_hosts: &[&str]) -> Self {
        wif_broker::crypto::install_provider();
        let documents = Documents::default();
        let mut hosts: HashSet<String> = extra_hosts.iter().map(|h| (*h).to_owned()).collect();
        for issuer in issuers {
            let mut by_url = documents.by_url.lock().unwrap();
            if let Some(discovery) = &issuer.discovery {
                by_url.insert(discovery.clone(), issuer.discovery_document());
                hosts.insert(host_of(discovery));
            }
            by_url.insert(issuer.jwks_uri.clone(), issuer.jwks());
            hosts.insert(host_of(&issuer.jwks_uri));
        }
        // Certificates name hosts, not ports.
        let names: HashSet<&str> = hosts
            .iter()
            .map(|h| h.split(':').next().unwrap_or(h))
            .collect();
        let names: Vec<&str> = names.into_iter().collect();
        let pki = TestPki::for_names(&names);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        let tls = wif_broker::tls::server_config(cert, key, Duration::from_secs(3600)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(documents.clone());
        tokio::spawn(wif_broker::api::serve::serve(
            listener,
            router,
            Some(tls),
            std::future::pending(),
            wif_broker::api::serve::Limits::default(),
        ));
        Self {
            addr,
            pki,
            documents,
            hosts,
            _dir: dir,
        }
    }

    /// Every URL asked of the farm so far.
    pub fn asked(&self) -> Vec<String> {
        self.documents.asked.lock().unwrap().clone()
    }
}

/// `host[:port]` of an https URL as a client writes it in `Host` (no `:443`).
fn host_of(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str().unwrap()),
        None => parsed.host_str().unwrap().to_owned(),
    }
}

async fn answer(State(documents): State<Documents>, request: Request) -> Response {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let authority = authority.strip_suffix(":443").unwrap_or(&authority);
    let url = format!("https://{authority}{}", request.uri().path());
    documents.asked.lock().unwrap().push(url.clone());
    let found = documents.by_url.lock().unwrap().get(&url).cloned();
    match found {
        Some(doc) => axum::Json(doc).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// An egress proxy: tunnels `CONNECT host:port` to the farm for the farm's hosts, and
/// answers 502 for any other host (one the internet here does not have).
pub struct Proxy {
    pub url: String,
    connects: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(farm: &Farm) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connects = Arc::new(Mutex::new(Vec::new()));
        let (seen, target, hosts) = (connects.clone(), farm.addr, farm.hosts.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (seen, hosts) = (seen.clone(), hosts.clone());
                tokio::spawn(async move {
                    let Some(authority) = read_connect(&mut client).await else {
                        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        return;
                    };
                    seen.lock().unwrap().push(authority.clone());
                    let host = authority.strip_suffix(":443").unwrap_or(&authority);
                    if !hosts.contains(host) {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    }
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            url,
            connects,
            task,
        }
    }

    /// Every `host:port` the broker asked to be tunnelled to.
    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a `CONNECT host:port HTTP/1.1` request head; `None` for anything else.
async fn read_connect(client: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let mut parts = head.lines().next()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(authority)) => Some(authority.to_owned()),
        _ => None,
    }
}

/// A federated credential as a test writes it.
pub struct Cred<'a> {
    pub name: &'a str,
    pub issuer: &'a str,
    /// `subject = ...`; otherwise `expression`.
    pub subject: Option<&'a str>,
    pub expression: Option<&'a str>,
    /// None: the default audience (`api://AzureADTokenExchange`).
    pub audience: Option<&'a str>,
}

impl<'a> Cred<'a> {
    pub fn subject(name: &'a str, issuer: &'a str, subject: &'a str) -> Self {
        Self {
            name,
            issuer,
            subject: Some(subject),
            expression: None,
            audience: None,
        }
    }

    pub fn expression(name: &'a str, issuer: &'a str, expression: &'a str) -> Self {
        Self {
            name,
            issuer,
            subject: None,
            expression: Some(expression),
            audience: None,
        }
    }

    pub fn audience(mut self, audience: &'a str) -> Self {
        self.audience = Some(audience);
        self
    }
}

/// An identity and the credentials that may act as it. Tests give each kind of
/// credential its own identity, so an answer's `identity.name` says which one admitted
/// the token.
pub struct Identity<'a> {
    pub name: &'a str,
    pub credentials: Vec<Cred<'a>>,
}

/// The farm, its proxy, the Entra emulator and one `wif-broker serve` configured with
/// `identities` and `extra` (`[[issuers]]` entries).
pub struct Matrix {
    pub farm: Farm,
    pub proxy: Proxy,
    pub broker: Broker,
    pub http: reqwest::Client,
    /// Kept for the broker's life: Entra, and the directory of its config and store.
    _entra: EntraEmulator,
    _dir: BrokerDir,
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Matrix {
    pub async fn start(farm: Farm, identities: &[Identity<'_>], extra: &str) -> Self {
        let proxy = Proxy::start(&farm).await;
        let entra = EntraEmulator::start(wif_broker::clock::system())
            .await
            .unwrap();
        let dir = BrokerDir::new();
        let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let broker_url = format!("http://{addr}");
        let mut toml = format!(
            "{base}\n[entra]\nauthority_host = \"{entra}\"\nmax_retries = 0\ntimeout_secs = 5\n\n\
             [outbound]\nallow_loopback_http = true\n\n[broker_issuer]\nurl = \"{broker_url}\"\n\n{extra}\n",
            base = dir.base_sections(),
            entra = entra.url(),
        );
        for (i, identity) in identities.iter().enumerate() {
            let client_id = format!("00000000-0000-4000-8000-{:012x}", i + 1);
            entra.register_app(
                AppRegistration::new(TENANT, &client_id).with_fic(EmulatedFic::new(
                    "wif-broker",
                    &broker_url,
                    identity.name,
                )),
            );
            toml.push_str(&format!(
                "[[identities]]\nname = \"{}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{client_id}\"\nassertion = \"broker\"\n\n",
                identity.name
            ));
            for cred in &identity.credentials {
                toml.push_str(&format!(
                    "[[identities.federated_credentials]]\nname = \"{}\"\nissuer = {}\n",
                    cred.name,
                    toml_string(cred.issuer)
                ));
                if let Some(subject) = cred.subject {
                    toml.push_str(&format!("subject = {}\n", toml_string(subject)));
                }
                if let Some(expression) = cred.expression {
                    toml.push_str(&format!(
                        "claims_matching_expression = {}\n",
                        toml_string(expression)
                    ));
                }
                if let Some(audience) = cred.audience {
                    toml.push_str(&format!("audiences = [{}]\n", toml_string(audience)));
                }
                toml.push('\n');
            }
        }
        let ca = dir.path("egress-ca.pem");
        std::fs::write(&ca, &farm.pki.ca_pem).unwrap();
        let env = [
            ("HTTPS_PROXY", proxy.url.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ];
        let broker = Broker::start_at(addr, &dir, &toml, &env).await;
        Self {
            farm,
            proxy,
            broker,
            http: support::client(),
            _entra: entra,
            _dir: dir,
        }
    }

    /// `POST /v1/token` with `token`, for Azure Resource Manager.
    pub async fn exchange(&self, token: &str) -> Answer {
        support::exchange(&self.http, &self.broker.url(), token, ARM).await
    }

    /// Asserts that `token` was exchanged for an access token of `identity`.
    pub async fn admits(&self, token: &str, identity: &str) {
        let answer = self.exchange(token).await;
        if answer.status != 200 {
            self.broker.fail(&format!(
                "expected {identity} to be admitted, got {} {}",
                answer.status, answer.text
            ));
        }
        assert_eq!(answer.body["identity"]["name"], identity, "{}", answer.text);
        assert!(
            answer.body["access_token"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
    }

    /// Asserts an error answer with `status` and `code` whose description contains
    /// `description`; returns it.
    pub async fn refuses(&self, token: &str, status: u16, code: &str, description: &str) -> Answer {
        let answer = self.exchange(token).await;
        assert_eq!(
            (answer.status, answer.error()),
            (status, code),
            "{}",
            answer.text
        );
        assert!(
            answer.description().contains(description),
            "description {:?} does not contain {description:?}",
            answer.description()
        );
        assert!(
            answer.body["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
        answer
    }

    /// Asserts that each near miss of the issuer's `iss`, signed with its own key, is
    /// refused as an unknown issuer without the broker fetching anything (issuers are
    /// compared exactly, as Entra compares them).
    pub async fn refuses_near_misses(&self, issuer: &Issuer, claims: &Value, near_misses: &[&str]) {
        for near in near_misses {
            assert_ne!(*near, issuer.iss);
            let mut claims = claims.clone();
            claims["iss"] = json!(near);
            let token = issuer.mint(&claims);
            let (asked, tunnels) = (self.farm.asked().len(), self.proxy.connects().len());
            self.refuses(
                &token,
                401,
                "unknown_issuer",
                "no federated credential names it",
            )
            .await;
            assert_eq!(
                (self.farm.asked().len(), self.proxy.connects().len()),
                (asked, tunnels),
                "the broker reached out for the near miss {near:?}"
            );
            // An admin asking why is told which credential's issuer it nearly is.
            let simulated = support::admin(
                &self.http,
                reqwest::Method::POST,
                &format!("{}/v1/simulate", self.broker.url()),
                Some(json!({ "token": token })),
            )
            .await;
            assert_eq!(
                simulated.body["outcome"], "unknown_issuer",
                "{}",
                simulated.text
            );
            let loose = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
            let named = simulated.body["nearMisses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|miss| miss["failed"] == "issuer");
            assert_eq!(
                named,
                loose(near) == loose(&issuer.iss),
                "near misses for {near:?}: {}",
                simulated.text
            );
        }
    }
}
