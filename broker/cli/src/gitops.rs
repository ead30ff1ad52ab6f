//! Identities and federated credentials as code: `plan`, `apply` and `export` compare a
//! registry file (YAML or TOML) with a running broker through its admin API, and `entra
//! plan` says what Entra must hold for each identity.
//!
//! The file holds the API's own request bodies: under `identities`, each identity's
//! `PUT /v1/identities/{name}` body; under `federatedIdentityCredentials`, each
//! identity's list of `POST .../federatedIdentityCredentials` bodies. A field the API
//! gains is a field the file gains. Comparison is on the JSON of those bodies, field by
//! field, treating an absent field, `null`, `false` and `[]` alike.
//!
//! Writes carry `If-Match` with the `ETag` the plan read (`If-None-Match: *` for a new
//! identity), so a concurrent change stops `apply` with `precondition_failed` and nothing
//! after it is written. A plan saved with `plan --out` is checked against a fresh plan
//! before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use reqwest::header::{IF_MATCH, IF_NONE_MATCH};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::admin::Connection;
use crate::client::{AdminClient, ClientError, Secret};
use crate::output::{Output, clean};
use wif_proto::admin::{Collection, CredentialRequest, Identity, IdentityRequest};
use wif_proto::entra_setup as setup;

/// A registry file: identities and their federated credentials, as the admin API takes
/// them. Published as `docs/registry.schema.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryFile {
    /// For editors: the JSON Schema's URL or path; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Identity name → the body of `PUT /v1/identities/{name}`.
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityRequest>,
    /// Identity name → bodies of `POST /v1/identities/{name}/federatedIdentityCredentials`.
    #[serde(default)]
    pub federated_identity_credentials: BTreeMap<String, Vec<CredentialRequest>>,
}

/// Thrown by `plan` when something would change: exit code 2, no error message.
#[derive(Debug, thiserror::Error)]
#[error("changes pending")]
pub struct ChangesPending;

/// The file's format: from `--format`, else from the file name (`.toml`), else YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    fn of(path: Option<&Path>, given: Option<Format>) -> Format {
        given.unwrap_or_else(
            || match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
                _ => Format::Yaml,
            },
        )
    }
}

/// The broker to talk to, as every admin command but without `--output` (`-o` is
/// `export`'s file).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection options (every admin command)")]
pub struct Remote {
    /// The broker's base URL.
    #[arg(
        long,
        env = "WIF_SERVER_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// Admin API token, or @FILE to read it from a file (a reader token can plan and
    /// export; apply needs the admin role).
    #[arg(
        long,
        env = "WIF_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN|@FILE"
    )]
    pub admin_token: Option<Secret>,
    /// Extra PEM roots to trust for the broker's certificate (a private CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> anyhow::Result<AdminClient> {
        Connection {
            server: self.server.clone(),
            admin_token: self.admin_token.clone(),
            ca_file: self.ca_file.clone(),
            output: Output::Table,
        }
        .client()
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The registry file (YAML, or TOML when it ends in .toml).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// The file's format; default: TOML for a name ending in .toml, else YAML.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Also plan to delete what the file does not name.
    #[arg(long)]
    pub prune: bool,
    /// Save the plan (JSON) for `apply --plan`, which refuses to run if the broker or the
    /// file changed since.
    #[arg(long, value_name = "PLAN")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// The file's format; default: TOML for a name ending in .toml, else YAML.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Delete identities and credentials the file does not name (never without it).
    #[arg(long)]
    pub prune: bool,
    /// Show the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A plan saved by `plan --out`: apply only if planning again gives the same changes
    /// against the same versions (ETags), else change nothing.
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write here instead of stdout; `.toml` selects TOML.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The file's format; default: TOML for a name ending in .toml, else YAML.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum EntraCommand {
    /// For each identity, the federated credentials Entra must hold (Graph JSON and Azure
    /// CLI commands), and the broker credentials that cannot work with its assertion.
    Plan(EntraPlanArgs),
}

#[derive(Debug, Args)]
pub struct EntraPlanArgs {
    /// Only this identity.
    #[arg(long)]
    pub identity: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

// ----- the file -------------------------------------------------------------------------

/// Reads and checks a registry file; errors name the file, line, column and field.
pub fn load(path: &Path, format: Option<Format>) -> anyhow::Result<RegistryFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: RegistryFile = match Format::of(Some(path), format) {
        Format::Toml => toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?,
        Format::Yaml => serde_saphyr::from_str(&text).map_err(|e| {
            let text = e.to_string();
            anyhow!("{}: {}", path.display(), text.trim_start_matches("error: "))
        })?,
    };
    for (identity, credentials) in &file.federated_identity_credentials {
        if !file.identities.contains_key(identity) {
            bail!(
                "{}: federatedIdentityCredentials.{identity}: the file declares no identity {identity:?} under identities",
                path.display()
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, c) in credentials.iter().enumerate() {
            let Some(name) = &c.name else {
                bail!(
                    "{}: federatedIdentityCredentials.{identity}[{index}]: name is required",
                    path.display()
                );
            };
            if !seen.insert(name.to_ascii_lowercase()) {
                bail!(
                    "{}: federatedIdentityCredentials.{identity}[{index}]: a second credential named {name:?}",
                    path.display()
                );
            }
        }
    }
    Ok(file)
}

fn render(file: &RegistryFile, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Toml => toml::to_string_pretty(file)?,
        Format::Yaml => serde_saphyr::to_string(file).map_err(|e| anyhow!("{e}"))?,
    })
}

// ----- comparing ------------------------------------------------------------------------

/// The JSON field names a serde struct accepts, read from its `Deserialize` impl.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    use serde::forward_to_deserialize_any;
    struct Names(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(Self::Error::custom("names read"))
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

/// Fields compared and written, besides the resource's name.
const NOT_COMPARED: [&str; 3] = ["name", "id", "readOnly"];

/// Absent, `null`, `false`, `""`-free: the value an unset field has.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The request fields of `T` in `value` (a request or an API view), without empties.
fn project<T: serde::de::DeserializeOwned>(value: &Value) -> Map<String, Value> {
    let names = field_names::<T>();
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            names.contains(&k.as_str()) && !NOT_COMPARED.contains(&k.as_str()) && !is_empty(v)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The identity as the file wants it.
fn desired_identity(request: &IdentityRequest) -> Map<String, Value> {
    // The broker stores a rate limit with its default burst filled in.
    let request = IdentityRequest {
        rate_limit: request.rate_limit.map(|r| r.normalized()),
        ..request.clone()
    };
    let mut map = project::<IdentityRequest>(&serde_json::to_value(&request).unwrap_or_default());
    if let Some(Value::String(host)) = map.get_mut("authorityHost") {
        *host = host.trim_end_matches('/').to_owned();
    }
    map
}

/// The identity as the broker shows it, in the file's terms: `authorityHost` only where
/// the file could have set it (no `cloud`), and only when the file sets one.
fn current_identity(view: &Value, desired: Option<&IdentityRequest>) -> Map<String, Value> {
    let mut map = project::<IdentityRequest>(view);
    let file_sets_host = desired.is_none_or(|d| d.authority_host.is_some());
    if map.contains_key("cloud") || !file_sets_host {
        map.remove("authorityHost");
    }
    map
}

fn desired_credential(request: &CredentialRequest, audience: &str) -> Map<String, Value> {
    let request = CredentialRequest {
        rate_limit: request.rate_limit.map(|r| r.map(|r| r.normalized())),
        ..request.clone()
    };
    let mut map = project::<CredentialRequest>(&serde_json::to_value(&request).unwrap_or_default());
    map.entry("audiences")
        .or_insert_with(|| Value::from(vec![audience.to_owned()]));
    map
}

/// One field that differs: `old` absent for a new value, `new` absent for a cleared one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

fn field_changes(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<FieldChange> {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            old: old.get(k).cloned(),
            new: new.get(k).cloned(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One write `apply` makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub action: Action,
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub fields: Vec<FieldChange>,
    /// The version the plan read; the write is made only if it is still current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The request body (PUT, POST or PATCH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

impl Change {
    fn what(&self) -> String {
        match &self.credential {
            Some(c) => format!("credential {}/{}", clean(&self.identity), clean(c)),
            None => format!("identity {}", clean(&self.identity)),
        }
    }

    /// Deleting credentials first frees names and subjects; identities are deleted
    /// before any is written (a client id may move); new credentials come last.
    fn order(&self) -> u8 {
        match (self.action, self.credential.is_some()) {
            (Action::Delete, true) => 0,
            (Action::Delete, false) => 1,
            (_, false) => 2,
            (Action::Update, true) => 3,
            (Action::Create, true) => 4,
        }
    }
}

/// What `apply` would do, and what it leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Identities declared in the broker's config file: read-only, never in the file.
    pub read_only: Vec<String>,
    /// On the broker but not in the file, kept because `--prune` was not given.
    pub kept: Vec<String>,
}

/// What the broker holds now, as its API shows it.
struct Live {
    identities: BTreeMap<String, Value>,
    credentials: BTreeMap<String, BTreeMap<String, Value>>,
}

async fn read_live(client: &AdminClient) -> anyhow::Result<Live> {
    let (list, _) = client
        .call(Method::GET, &["v1", "identities"], &[], None::<&()>)
        .await?
        .parse::<Collection<Value>>()?;
    let mut live = Live {
        identities: BTreeMap::new(),
        credentials: BTreeMap::new(),
    };
    for view in list.value {
        let name = view["name"].as_str().unwrap_or_default().to_owned();
        let (creds, _) = client
            .call(
                Method::GET,
                &["v1", "identities", &name, "federatedIdentityCredentials"],
                &[],
                None::<&()>,
            )
            .await?
            .parse::<Collection<Value>>()?;
        let by_name = creds
            .value
            .into_iter()
            .map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c))
            .collect();
        live.credentials.insert(name.clone(), by_name);
        live.identities.insert(name, view);
    }
    Ok(live)
}

/// The resource again, with its `ETag`: what an update or delete is conditioned on.
async fn versioned(client: &AdminClient, segments: &[&str]) -> anyhow::Result<(Value, String)> {
    let answer = client.call(Method::GET, segments, &[], None::<&()>).await?;
    let etag = answer.etag.clone().ok_or_else(|| {
        anyhow!(
            "the broker sent no ETag for {}; upgrade it",
            segments.join("/")
        )
    })?;
    Ok((answer.body.unwrap_or_default(), etag))
}

fn is_read_only(view: &Value) -> bool {
    view["readOnly"].as_bool().unwrap_or(false)
}

/// The body a PATCH sends: each changed field's new value, or its empty value to clear it.
fn patch_body(fields: &[FieldChange]) -> Value {
    let map: Map<String, Value> = fields
        .iter()
        .map(|f| {
            let value = f.new.clone().unwrap_or(match &f.old {
                Some(Value::Bool(_)) => Value::Bool(false),
                Some(Value::Array(_)) => Value::Array(Vec::new()),
                _ => Value::Null,
            });
            (f.field.clone(), value)
        })
        .collect();
    Value::Object(map)
}

/// Compares `file` with the broker and lists the writes that would make them equal.
pub async fn make_plan(
    client: &AdminClient,
    file: &RegistryFile,
    prune: bool,
) -> anyhow::Result<Plan> {
    let live = read_live(client).await?;
    let mut plan = Plan::default();
    for (name, view) in &live.identities {
        if is_read_only(view) {
            plan.read_only.push(name.clone());
        }
    }
    for name in file.identities.keys() {
        let declared = live
            .identities
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case(name) && is_read_only(v));
        if let Some((n, _)) = declared {
            bail!(
                "identity {:?} is declared in the broker's config file and is read-only through the API; remove it from the registry file (export leaves such identities out)",
                clean(n)
            );
        }
    }
    // Identities.
    for (name, request) in &file.identities {
        let desired = desired_identity(request);
        let body = serde_json::to_value(request)?;
        match live.identities.get(name) {
            None => plan.changes.push(Change {
                action: Action::Create,
                identity: name.clone(),
                credential: None,
                fields: field_changes(&Map::new(), &desired),
                etag: None,
                body: Some(body),
            }),
            Some(view) => {
                if field_changes(&current_identity(view, Some(request)), &desired).is_empty() {
                    continue;
                }
                let (fresh, etag) = versioned(client, &["v1", "identities", name]).await?;
                let fields = field_changes(&current_identity(&fresh, Some(request)), &desired);
                if !fields.is_empty() {
                    plan.changes.push(Change {
                        action: Action::Update,
                        identity: name.clone(),
                        credential: None,
                        fields,
                        etag: Some(etag),
                        body: Some(body),
                    });
                }
            }
        }
    }
    for (name, view) in &live.identities {
        if is_read_only(view) || file.identities.contains_key(name) {
            continue;
        }
        if prune {
            let (fresh, etag) = versioned(client, &["v1", "identities", name]).await?;
            plan.changes.push(Change {
                action: Action::Delete,
                identity: name.clone(),
                credential: None,
                fields: field_changes(&current_identity(&fresh, None), &Map::new()),
                etag: Some(etag),
                body: None,
            });
        } else {
            plan.kept.push(format!("identity {name}"));
        }
    }
    // Credentials of the identities the file declares.
    let empty = BTreeMap::new();
    for (identity, request) in &file.identities {
        let audience = request
            .cloud
            .unwrap_or(wif_config::Cloud::Public)
            .default_audience();
        let wanted = file
            .federated_identity_credentials
            .get(identity)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let current = live.credentials.get(identity).unwrap_or(&empty);
        for c in wanted {
            let name = c.name.clone().unwrap_or_default();
            let desired = desired_credential(c, audience);
            let segments = [
                "v1",
                "identities",
                identity.as_str(),
                "federatedIdentityCredentials",
                name.as_str(),
            ];
            match current.get(&name) {
                None => {
                    let mut body = serde_json::to_value(c)?;
                    if let Value::Object(map) = &mut body {
                        map.remove("id");
                        map.remove("readOnly");
                    }
                    plan.changes.push(Change {
                        action: Action::Create,
                        identity: identity.clone(),
                        credential: Some(name),
                        fields: field_changes(&Map::new(), &desired),
                        etag: None,
                        body: Some(body),
                    });
                }
                Some(view) => {
                    if field_changes(&project::<CredentialRequest>(view), &desired).is_empty() {
                        continue;
                    }
                    let (fresh, etag) = versioned(client, &segments).await?;
                    let fields = field_changes(&project::<CredentialRequest>(&fresh), &desired);
                    if !fields.is_empty() {
                        let body = patch_body(&fields);
                        plan.changes.push(Change {
                            action: Action::Update,
                            identity: identity.clone(),
                            credential: Some(name),
                            fields,
                            etag: Some(etag),
                            body: Some(body),
                        });
                    }
                }
            }
        }
        for name in current.keys() {
            if wanted.iter().any(|c| c.name.as_deref() == Some(name)) {
                continue;
            }
            if prune {
                let segments = [
                    "v1",
                    "identities",
                    identity.as_str(),
                    "federatedIdentityCredentials",
                    name.as_str(),
                ];
                let (fresh, etag) = versioned(client, &segments).await?;
                plan.changes.push(Change {
                    action: Action::Delete,
                    identity: identity.clone(),
                    credential: Some(name.clone()),
                    fields: field_changes(&project::<CredentialRequest>(&fresh), &Map::new()),
                    etag: Some(etag),
                    body: None,
                });
            } else {
                plan.kept.push(format!("credential {identity}/{name}"));
            }
        }
    }
    plan.changes.sort_by_key(Change::order);
    Ok(plan)
}

fn show_value(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(v) => clean(&v.to_string()),
    }
}

/// The plan for people: one line per change, one per changed field, then a summary.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    for change in &plan.changes {
        let sign = match change.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        };
        out.push_str(&format!(
            "{sign} {} {}\n",
            change.action.verb(),
            change.what()
        ));
        for f in &change.fields {
            match change.action {
                Action::Create => {
                    out.push_str(&format!("    {}: {}\n", f.field, show_value(&f.new)))
                }
                Action::Delete => {
                    out.push_str(&format!("    {}: {}\n", f.field, show_value(&f.old)))
                }
                Action::Update => out.push_str(&format!(
                    "    {}: {} -> {}\n",
                    f.field,
                    show_value(&f.old),
                    show_value(&f.new)
                )),
            }
        }
    }
    let count = |a: Action| plan.changes.iter().filter(|c| c.action == a).count();
    if plan.changes.is_empty() {
        out.push_str("No changes: the broker matches the file.\n");
    } else {
        out.push_str(&format!(
            "Plan: {} to create, {} to update, {} to delete.\n",
            count(Action::Create),
            count(Action::Update),
            count(Action::Delete)
        ));
    }
    if !plan.read_only.is_empty() {
        out.push_str(&format!(
            "Read-only (declared in the broker's config file, not managed here): {}\n",
            plan.read_only
                .iter()
                .map(|n| clean(n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !plan.kept.is_empty() {
        out.push_str(&format!(
            "Not in the file, kept (apply --prune deletes them): {}\n",
            plan.kept
                .iter()
                .map(|n| clean(n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

// ----- commands -------------------------------------------------------------------------

pub async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let file = load(&args.file, args.format)?;
    let client = args.remote.client()?;
    let plan = make_plan(&client, &file, args.prune).await?;
    print!("{}", describe(&plan));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&plan)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if plan.changes.is_empty() {
        Ok(())
    } else {
        Err(ChangesPending.into())
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let file = load(&args.file, args.format)?;
    let client = args.remote.client()?;
    let plan = make_plan(&client, &file, args.prune).await?;
    if let Some(saved) = &args.plan {
        let text =
            std::fs::read(saved).with_context(|| format!("cannot read {}", saved.display()))?;
        let saved_plan: Plan = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a plan saved by plan --out", saved.display()))?;
        if saved_plan.changes != plan.changes {
            print!("{}", describe(&plan));
            bail!(
                "the broker or the file changed since the plan in {} was made (someone wrote concurrently, or the file was edited): the changes above are what applying now would do; nothing was changed, run plan again",
                saved.display()
            );
        }
    }
    print!("{}", describe(&plan));
    if args.dry_run || plan.changes.is_empty() {
        return Ok(());
    }
    let total = plan.changes.len();
    for (done, change) in plan.changes.iter().enumerate() {
        if let Err(e) = write(&client, change).await {
            let why = match &e {
                ClientError::Api(f) if f.error == "precondition_failed" => format!(
                    "{} changed on the broker since this plan read it (a concurrent write)",
                    change.what()
                ),
                _ => format!("cannot {} {}", change.action.verb(), change.what()),
            };
            bail!(
                "{why}: {e}\n{done} of {total} changes were applied before it; nothing after it was written. Plan again and review."
            );
        }
        println!("{}d {}", change.action.verb(), change.what());
    }
    println!("Applied {total} changes.");
    Ok(())
}

async fn write(client: &AdminClient, change: &Change) -> Result<(), ClientError> {
    let mut segments = vec!["v1", "identities", change.identity.as_str()];
    if let Some(c) = &change.credential {
        segments.push("federatedIdentityCredentials");
        if change.action != Action::Create {
            segments.push(c);
        }
    }
    let method = match (change.action, change.credential.is_some()) {
        (Action::Delete, _) => Method::DELETE,
        (_, false) => Method::PUT,
        (Action::Create, true) => Method::POST,
        (Action::Update, true) => Method::PATCH,
    };
    let mut conditions = Vec::new();
    if let Some(etag) = &change.etag {
        conditions.push((IF_MATCH, etag.as_str()));
    } else if change.credential.is_none() {
        conditions.push((IF_NONE_MATCH, "*"));
    }
    client
        .call_if(method, &segments, &[], change.body.as_ref(), &conditions)
        .await
        .map(|_| ())
}

/// The broker's API identities and credentials as a registry file.
pub async fn export_file(client: &AdminClient) -> anyhow::Result<RegistryFile> {
    let live = read_live(client).await?;
    let mut file = RegistryFile::default();
    for (name, view) in &live.identities {
        if is_read_only(view) {
            continue;
        }
        let mut map = project::<IdentityRequest>(view);
        if map.contains_key("cloud") {
            map.remove("authorityHost");
        }
        let request: IdentityRequest = serde_json::from_value(Value::Object(map))
            .with_context(|| format!("identity {name:?} as the broker shows it"))?;
        file.identities.insert(name.clone(), request);
        let mut credentials = Vec::new();
        for (credential, view) in live.credentials.get(name).into_iter().flatten() {
            let mut map = project::<CredentialRequest>(view);
            map.insert("name".into(), Value::String(credential.clone()));
            let request: CredentialRequest = serde_json::from_value(Value::Object(map))
                .with_context(|| {
                    format!("credential {name}/{credential} as the broker shows it")
                })?;
            credentials.push(request);
        }
        if !credentials.is_empty() {
            file.federated_identity_credentials
                .insert(name.clone(), credentials);
        }
    }
    Ok(file)
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let file = export_file(&client).await?;
    let text = render(&file, Format::of(args.output.as_deref(), args.format))?;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

pub async fn entra(command: EntraCommand) -> anyhow::Result<()> {
    let EntraCommand::Plan(args) = command;
    let client = args.connection.client()?;
    let identities: Vec<Identity> = match &args.identity {
        Some(name) => vec![
            client
                .call(Method::GET, &["v1", "identities", name], &[], None::<&()>)
                .await?
                .parse()?
                .0,
        ],
        None => {
            client
                .call(Method::GET, &["v1", "identities"], &[], None::<&()>)
                .await?
                .parse::<Collection<Identity>>()?
                .0
                .value
        }
    };
    // The broker computes what Entra must hold: it knows which expressions Entra accepts.
    let mut setups = Vec::new();
    for identity in &identities {
        let (setup, _) = client
            .call(
                Method::GET,
                &["v1", "identities", &identity.name, "entraSetup"],
                &[],
                None::<&()>,
            )
            .await?
            .parse::<setup::EntraSetup>()?;
        setups.push(setup);
    }
    match args.connection.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&setups)?),
        Output::Table => {
            for s in &setups {
                print!("{}", describe_setup(s));
            }
        }
    }
    Ok(())
}

/// `entra plan` for people.
pub fn describe_setup(s: &setup::EntraSetup) -> String {
    let mut out = format!(
        "identity {} (client {}, tenant {}, assertion {}): {} federated credential(s) in Entra\n",
        clean(&s.identity),
        clean(&s.client_id),
        clean(&s.tenant_id),
        s.assertion,
        s.federated_identity_credentials.len()
    );
    for c in &s.federated_identity_credentials {
        out.push_str(&format!(
            "  {}\n    Graph: {}\n    {}\n",
            clean(c.graph.name.as_deref().unwrap_or_default()),
            clean(&serde_json::to_string(&c.graph).unwrap_or_default()),
            clean(&c.az_app_command)
        ));
        if let Some(cmd) = &c.az_identity_command {
            out.push_str(&format!("    {}\n", clean(cmd)));
        }
    }
    for b in &s.broker_only {
        out.push_str(&format!(
            "  broker only: {}: {}\n",
            clean(&b.credential),
            clean(&b.reason)
        ));
    }
    for n in &s.notes {
        out.push_str(&format!("  note: {}\n", clean(n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_the_api_types() {
        let names = field_names::<IdentityRequest>();
        assert!(names.contains(&"tenantId") && names.contains(&"assertionSubject"));
        let names = field_names::<CredentialRequest>();
        assert!(names.contains(&"claimsMatchingExpression") && names.contains(&"oneTimeUse"));
    }

    /// The published JSON Schema names exactly the API's fields: a field added to the API
    /// fails here until the schema has it too.
    #[test]
    fn the_published_schema_has_the_api_fields() {
        let schema: Value =
            serde_json::from_str(include_str!("../../../docs/registry.schema.json")).unwrap();
        let keys = |def: &str| -> Vec<String> {
            let mut keys: Vec<String> = schema["$defs"][def]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let sorted = |names: &[&str]| -> Vec<String> {
            let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(keys("identity"), sorted(field_names::<IdentityRequest>()));
        assert_eq!(
            keys("credential"),
            sorted(field_names::<CredentialRequest>())
        );
        let top: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            top,
            ["$schema", "federatedIdentityCredentials", "identities"]
        );
    }

    #[test]
    fn empty_values_compare_as_absent() {
        let old = project::<CredentialRequest>(&serde_json::json!({
            "id": "x", "name": "a", "issuer": "https://i", "subject": "s",
            "description": null, "oneTimeUse": false, "readOnly": false,
            "audiences": ["api://AzureADTokenExchange"]
        }));
        let new = desired_credential(
            &serde_json::from_value(
                serde_json::json!({"name": "a", "issuer": "https://i", "subject": "s"}),
            )
            .unwrap(),
            "api://AzureADTokenExchange",
        );
        assert!(field_changes(&old, &new).is_empty());
        let cleared = patch_body(&[FieldChange {
            field: "oneTimeUse".into(),
            old: Some(Value::Bool(true)),
            new: None,
        }]);
        assert_eq!(cleared, serde_json::json!({"oneTimeUse": false}));
    }
}
