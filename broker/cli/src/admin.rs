//! The admin commands: `identity`, `credential`, `simulate`, `audit` (which call a running
//! broker's admin API) and `admin-token` (which makes and hashes admin tokens locally).
//!
//! Requests and answers are the API's own wire types ([`crate::api::admin::model`]); this
//! module only turns flags into them and them into tables. `--output json` prints the
//! server's JSON untouched (pretty-printed), so `credential show -o json` can be fed back
//! to `credential create --parameters @file`, the way `az ad app federated-credential`
//! works with Graph JSON.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use wif_config::{AssertionSource, Cloud};

use wif_proto::admin::Role;
use wif_proto::timespec;

use crate::client::{AdminClient, Secret};
use crate::output::{self, Output, Table, fields, pretty};
use wif_proto::admin::{
    ClaimsMatchingExpression, Collection, Credential, CredentialRequest, Identity, IdentityRequest,
    NearMiss, RateLimit, SimulateRequest, SimulateResponse,
};
use wif_proto::clock::SharedClock;

/// Where the broker is, who is calling, and how to print: shared by every admin command,
/// and listed apart from each command's own options in `--help`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection options (every admin command)")]
pub struct Connection {
    /// The broker's base URL.
    #[arg(
        long,
        global = true,
        env = "WIF_SERVER_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// Admin API token, or @FILE to read it from a file.
    #[arg(
        long,
        global = true,
        env = "WIF_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN|@FILE"
    )]
    pub admin_token: Option<Secret>,
    /// Extra PEM roots to trust for the broker's certificate (a private CA).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// `table` for people, `json` for scripts (the server's JSON, pretty-printed).
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,
}

impl Connection {
    pub(crate) fn client(&self) -> anyhow::Result<AdminClient> {
        let Some(token) = &self.admin_token else {
            bail!("no admin token: pass --admin-token TOKEN (or @FILE), or set WIF_ADMIN_TOKEN");
        };
        let token = Secret::new(read_value(token.expose(), "--admin-token")?.trim());
        if token.expose().is_empty() {
            bail!("the admin token is empty");
        }
        let client = AdminClient::new(&self.server, token, self.ca_file.as_deref())?;
        if client.base().scheme() == "http" && !wif_config::is_loopback(client.base()) {
            eprintln!(
                "warning: sending the admin token over plain http to {}; use https",
                client.base()
            );
        }
        Ok(client)
    }
}

// ---------------------------------------------------------------------------------------
// identity

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Register an identity, or replace the one with this name (PUT).
    Create {
        /// The identity's name, used in credentials and exchanges.
        name: String,
        /// The Entra tenant (directory) id.
        #[arg(long)]
        tenant_id: String,
        /// The app registration's or managed identity's client (application) id.
        #[arg(long)]
        client_id: String,
        /// The Azure cloud: public, usgov or china.
        #[arg(long, value_parser = parse_wire::<Cloud>, conflicts_with = "authority_host")]
        cloud: Option<Cloud>,
        /// An explicit Entra authority host instead of a cloud's.
        #[arg(long, value_name = "URL")]
        authority_host: Option<String>,
        /// How the broker builds the assertion it sends to Entra: passthrough, broker
        /// (the broker's own issuer; needs [broker_issuer] url) or managed_identity.
        #[arg(long, value_parser = parse_wire::<AssertionSource>, default_value = "passthrough")]
        assertion: AssertionSource,
        /// With `--assertion broker`: the subject of the broker's assertions, which the
        /// identity's one federated credential in Entra names (default: NAME).
        #[arg(long, value_name = "SUBJECT")]
        assertion_subject: Option<String>,
        /// Refuse every exchange for the identity (and drop its cached tokens) without
        /// deleting it.
        #[arg(long)]
        disabled: bool,
        /// Scopes the identity's tokens may be asked for (comma separated; `*`
        /// wildcards), for credentials that name none. Default: any.
        #[arg(long, value_delimiter = ',', value_name = "SCOPE")]
        allowed_scopes: Vec<String>,
        /// The identity's exchanges per minute on each replica (default: [rate_limits]).
        #[arg(long, value_name = "N")]
        rate_per_minute: Option<u32>,
        /// With --rate-per-minute: how many may come at once (default: N).
        #[arg(long, value_name = "N", requires = "rate_per_minute")]
        rate_burst: Option<u32>,
    },
    /// List identities.
    List,
    /// Show one identity.
    Show { name: String },
    /// Delete an identity and its federated credentials.
    Delete { name: String },
}

pub async fn identity(args: IdentityArgs) -> anyhow::Result<()> {
    let conn = &args.connection;
    let client = conn.client()?;
    match args.command {
        IdentityCommand::Create {
            name,
            tenant_id,
            client_id,
            cloud,
            authority_host,
            assertion,
            assertion_subject,
            disabled,
            allowed_scopes,
            rate_per_minute,
            rate_burst,
        } => {
            let request = IdentityRequest {
                tenant_id,
                client_id,
                cloud,
                authority_host,
                assertion,
                assertion_subject,
                disabled,
                allowed_scopes,
                rate_limit: rate_limit(rate_per_minute, rate_burst),
            };
            let answer = client
                .call(
                    Method::PUT,
                    &["v1", "identities", &name],
                    &[],
                    Some(&request),
                )
                .await?;
            let verb = if answer.status == StatusCode::CREATED {
                "created"
            } else {
                "replaced"
            };
            let (identity, raw) = answer.parse::<Identity>()?;
            print_one(conn.output, &raw, || {
                format!(
                    "{verb} identity {}\n{}",
                    output::clean(&identity.name),
                    identity_fields(&identity)
                )
            })
        }
        IdentityCommand::List => {
            let (list, raw) = client
                .call(Method::GET, &["v1", "identities"], &[], None::<&()>)
                .await?
                .parse::<Collection<Identity>>()?;
            print_one(conn.output, &raw, || identity_table(&list.value))
        }
        IdentityCommand::Show { name } => {
            let (identity, raw) = client
                .call(Method::GET, &["v1", "identities", &name], &[], None::<&()>)
                .await?
                .parse::<Identity>()?;
            print_one(conn.output, &raw, || identity_fields(&identity))
        }
        IdentityCommand::Delete { name } => {
            client
                .call(
                    Method::DELETE,
                    &["v1", "identities", &name],
                    &[],
                    None::<&()>,
                )
                .await?;
            print_deleted(
                conn.output,
                &format!("deleted identity {}", output::clean(&name)),
            )
        }
    }
}

pub fn identity_fields(i: &Identity) -> String {
    fields(&[
        ("name", Some(i.name.clone())),
        ("tenantId", Some(i.tenant_id.clone())),
        ("clientId", Some(i.client_id.clone())),
        ("cloud", i.cloud.map(|c| wire_name(&c))),
        ("authorityHost", Some(i.authority_host.clone())),
        ("assertion", Some(wire_name(&i.assertion))),
        ("source", Some(i.source.clone())),
        (
            "entraCredential",
            i.entra_federated_credential.as_ref().map(|c| {
                format!(
                    "issuer {} subject {} audience {}",
                    c.issuer,
                    c.subject,
                    c.audiences.join(",")
                )
            }),
        ),
        ("readOnly", Some(i.read_only.to_string())),
        ("created", i.created_date_time.clone()),
        ("lastModified", i.last_modified_date_time.clone()),
    ])
}

pub fn identity_table(identities: &[Identity]) -> String {
    let mut table = Table::new([
        "NAME",
        "TENANT ID",
        "CLIENT ID",
        "AUTHORITY",
        "ASSERTION",
        "SOURCE",
    ]);
    for i in identities {
        let authority = match i.cloud {
            Some(cloud) => wire_name(&cloud),
            None => i.authority_host.clone(),
        };
        table.row([
            i.name.clone(),
            i.tenant_id.clone(),
            i.client_id.clone(),
            authority,
            wire_name(&i.assertion),
            i.source.clone(),
        ]);
    }
    table.render()
}

// ---------------------------------------------------------------------------------------
// credential

#[derive(Debug, Args)]
pub struct CredentialArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: CredentialCommand,
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Register a federated credential: Graph JSON with --parameters, or the flags.
    Create {
        /// The identity the credential lets tokens act as.
        #[arg(long)]
        identity: String,
        /// The credential's name, unique within the identity.
        #[arg(
            long,
            required_unless_present = "parameters",
            conflicts_with = "parameters"
        )]
        name: Option<String>,
        /// The token issuer (`iss`), e.g. https://token.actions.githubusercontent.com.
        #[arg(
            long,
            required_unless_present = "parameters",
            conflicts_with = "parameters"
        )]
        issuer: Option<String>,
        #[command(flatten)]
        fields: CredentialFields,
    },
    /// List an identity's federated credentials.
    List {
        /// The identity whose credentials to list.
        #[arg(long)]
        identity: String,
    },
    /// Show one federated credential (by name or id).
    Show {
        #[arg(long)]
        identity: String,
        credential: String,
    },
    /// Change a federated credential (PATCH): Graph JSON with --parameters, or the flags.
    /// The name cannot change.
    Update {
        #[arg(long)]
        identity: String,
        /// The credential's name or id.
        credential: String,
        /// A new issuer.
        #[arg(long, conflicts_with = "parameters")]
        issuer: Option<String>,
        #[command(flatten)]
        fields: CredentialFields,
    },
    /// Delete a federated credential (by name or id).
    Delete {
        #[arg(long)]
        identity: String,
        credential: String,
    },
}

/// The flags `create` and `update` share, after `az ad app federated-credential`.
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialFields {
    /// The credential as Graph JSON (name, issuer, subject, audiences, description,
    /// claimsMatchingExpression{value,languageVersion}): inline, @FILE, or @- for stdin.
    #[arg(long, value_name = "JSON|@FILE")]
    pub parameters: Option<String>,
    /// The exact `sub` tokens must carry.
    #[arg(long, conflicts_with_all = ["parameters", "claims_matching_expression"])]
    pub subject: Option<String>,
    /// A flexible-FIC rule instead of a subject, e.g.
    /// "claims['sub'] matches 'repo:contoso/*:ref:refs/heads/main'".
    #[arg(long, value_name = "EXPR", conflicts_with = "parameters")]
    pub claims_matching_expression: Option<String>,
    /// Accepted `aud` values (space or comma separated). The server's default is
    /// api://AzureADTokenExchange.
    #[arg(long, num_args = 1.., value_delimiter = ',', conflicts_with = "parameters")]
    pub audiences: Option<Vec<String>>,
    /// Free text.
    #[arg(long, conflicts_with = "parameters")]
    pub description: Option<String>,
    /// Accept each token (by `jti`) only once.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        conflicts_with = "parameters"
    )]
    pub one_time_use: Option<bool>,
    /// Refuse tokens this credential matches, without deleting it (`--disabled=false`
    /// enables it again).
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        conflicts_with = "parameters"
    )]
    pub disabled: Option<bool>,
    /// Scopes tokens matched by this credential may be asked for (comma separated; `*`
    /// wildcards). Default: the identity's.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SCOPE",
        conflicts_with = "parameters"
    )]
    pub allowed_scopes: Option<Vec<String>>,
    /// Networks (CIDR, comma separated) exchanges must come from.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR",
        conflicts_with = "parameters"
    )]
    pub source_networks: Option<Vec<String>>,
    /// Refuse tokens issued longer ago than this many seconds.
    #[arg(long, value_name = "SECONDS", conflicts_with = "parameters")]
    pub max_token_age: Option<u64>,
    /// Admit nothing before this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "parameters")]
    pub not_before: Option<String>,
    /// Admit nothing from this time on (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "parameters")]
    pub not_after: Option<String>,
    /// Each caller's (issuer and subject) exchanges per minute on each replica.
    #[arg(long, value_name = "N", conflicts_with = "parameters")]
    pub rate_per_minute: Option<u32>,
    /// With --rate-per-minute: how many may come at once (default: N).
    #[arg(long, value_name = "N", requires = "rate_per_minute")]
    pub rate_burst: Option<u32>,
}

/// `--rate-per-minute` and `--rate-burst` as a request's `rateLimit`.
fn rate_limit(per_minute: Option<u32>, burst: Option<u32>) -> Option<RateLimit> {
    per_minute.map(|per_minute| RateLimit {
        per_minute,
        burst: burst.unwrap_or(0),
    })
}

/// Whether a [`CredentialRequest`] is a POST (create) or a PATCH (update) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Create,
    Update,
}

/// The request body `credential create` or `credential update` sends.
pub fn credential_request(
    kind: RequestKind,
    name: Option<String>,
    issuer: Option<String>,
    f: &CredentialFields,
) -> anyhow::Result<CredentialRequest> {
    if let Some(parameters) = &f.parameters {
        let text = read_value(parameters, "--parameters")?;
        return parse_parameters(&text, kind);
    }
    let expression = f
        .claims_matching_expression
        .as_ref()
        .map(|value| ClaimsMatchingExpression {
            value: value.clone(),
            language_version: 1,
        });
    // A PATCH that sets one way of matching clears the other, so switching between a
    // subject and an expression is one command.
    let clear_other = kind == RequestKind::Update;
    let request = CredentialRequest {
        name,
        issuer,
        subject: match (&f.subject, &expression) {
            (Some(subject), _) => Some(Some(subject.clone())),
            (None, Some(_)) if clear_other => Some(None),
            (None, _) => None,
        },
        claims_matching_expression: match (expression, &f.subject) {
            (Some(expression), _) => Some(Some(expression)),
            (None, Some(_)) if clear_other => Some(None),
            (None, _) => None,
        },
        audiences: f.audiences.clone().filter(|a| !a.is_empty()),
        description: f.description.clone().map(Some),
        one_time_use: f.one_time_use,
        disabled: f.disabled,
        allowed_scopes: f.allowed_scopes.clone(),
        source_networks: f.source_networks.clone(),
        max_token_age_seconds: f.max_token_age.map(Some),
        not_before: f.not_before.clone().map(Some),
        not_after: f.not_after.clone().map(Some),
        rate_limit: rate_limit(f.rate_per_minute, f.rate_burst).map(Some),
        id: None,
        read_only: None,
    };
    if kind == RequestKind::Update && request == CredentialRequest::default() {
        bail!(
            "nothing to update: pass --parameters or at least one of --issuer, --subject, \
             --claims-matching-expression, --audiences, --description, --one-time-use"
        );
    }
    Ok(request)
}

/// Graph JSON as `az ad app federated-credential create --parameters` takes it. What the
/// API (or Graph) shows but never accepts is dropped: `id`, `readOnly`, `@odata.*`. For a
/// create, `null` fields mean "absent", as they do in what Graph returns.
pub fn parse_parameters(text: &str, kind: RequestKind) -> anyhow::Result<CredentialRequest> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| anyhow!("--parameters is not valid JSON: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        bail!("--parameters must be a JSON object such as {{\"name\": ..., \"issuer\": ...}}");
    };
    object.retain(|key, _| key != "id" && key != "readOnly" && !key.starts_with("@odata."));
    let mut request: CredentialRequest =
        serde_json::from_value(value).map_err(|e| anyhow!("--parameters: {e}"))?;
    if kind == RequestKind::Create {
        request.subject = request.subject.filter(Option::is_some);
        request.claims_matching_expression =
            request.claims_matching_expression.filter(Option::is_some);
        request.description = request.description.filter(Option::is_some);
    }
    Ok(request)
}

pub async fn credential(args: CredentialArgs) -> anyhow::Result<()> {
    let conn = &args.connection;
    match args.command {
        CredentialCommand::Create {
            identity,
            name,
            issuer,
            fields,
        } => {
            let request = credential_request(RequestKind::Create, name, issuer, &fields)?;
            let client = conn.client()?;
            let (credential, raw) = client
                .call(
                    Method::POST,
                    &["v1", "identities", &identity, FICS],
                    &[],
                    Some(&request),
                )
                .await?
                .parse::<Credential>()?;
            print_one(conn.output, &raw, || {
                format!(
                    "created credential {} for identity {}\n{}",
                    output::clean(&credential.name),
                    output::clean(&identity),
                    credential_fields(&credential)
                )
            })
        }
        CredentialCommand::List { identity } => {
            let (list, raw) = conn
                .client()?
                .call(
                    Method::GET,
                    &["v1", "identities", &identity, FICS],
                    &[],
                    None::<&()>,
                )
                .await?
                .parse::<Collection<Credential>>()?;
            print_one(conn.output, &raw, || credential_table(&list.value))
        }
        CredentialCommand::Show {
            identity,
            credential,
        } => {
            let (credential, raw) = conn
                .client()?
                .call(
                    Method::GET,
                    &["v1", "identities", &identity, FICS, &credential],
                    &[],
                    None::<&()>,
                )
                .await?
                .parse::<Credential>()?;
            print_one(conn.output, &raw, || credential_fields(&credential))
        }
        CredentialCommand::Update {
            identity,
            credential,
            issuer,
            fields,
        } => {
            let request = credential_request(RequestKind::Update, None, issuer, &fields)?;
            let (updated, raw) = conn
                .client()?
                .call(
                    Method::PATCH,
                    &["v1", "identities", &identity, FICS, &credential],
                    &[],
                    Some(&request),
                )
                .await?
                .parse::<Credential>()?;
            print_one(conn.output, &raw, || {
                format!(
                    "updated credential {}\n{}",
                    output::clean(&updated.name),
                    credential_fields(&updated)
                )
            })
        }
        CredentialCommand::Delete {
            identity,
            credential,
        } => {
            conn.client()?
                .call(
                    Method::DELETE,
                    &["v1", "identities", &identity, FICS, &credential],
                    &[],
                    None::<&()>,
                )
                .await?;
            print_deleted(
                conn.output,
                &format!(
                    "deleted credential {} of identity {}",
                    output::clean(&credential),
                    output::clean(&identity)
                ),
            )
        }
    }
}

const FICS: &str = "federatedIdentityCredentials";

fn expression_text(e: &ClaimsMatchingExpression) -> String {
    format!("{} (v{})", e.value, e.language_version)
}

pub fn credential_fields(c: &Credential) -> String {
    fields(&[
        ("id", Some(c.id.clone())),
        ("name", Some(c.name.clone())),
        ("issuer", Some(c.issuer.clone())),
        ("subject", c.subject.clone()),
        (
            "claimsMatchingExpression",
            c.claims_matching_expression.as_ref().map(expression_text),
        ),
        ("audiences", Some(c.audiences.join(", "))),
        ("description", c.description.clone()),
        ("oneTimeUse", Some(c.one_time_use.to_string())),
        ("readOnly", Some(c.read_only.to_string())),
    ])
}

pub fn credential_table(credentials: &[Credential]) -> String {
    let mut table = Table::new(["NAME", "ISSUER", "MATCHES", "AUDIENCES", "ID"]);
    for c in credentials {
        let matches = match (&c.subject, &c.claims_matching_expression) {
            (Some(subject), _) => format!("subject {subject}"),
            (None, Some(e)) => format!("expression {}", e.value),
            (None, None) => String::new(),
        };
        table.row([
            c.name.clone(),
            c.issuer.clone(),
            matches,
            c.audiences.join(","),
            c.id.clone(),
        ]);
    }
    table.render()
}

// ---------------------------------------------------------------------------------------
// simulate

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A real token (JWT), @FILE, or @- for stdin: checked as the exchange would.
    #[arg(
        long,
        value_name = "JWT|@FILE",
        required_unless_present = "claims",
        conflicts_with_all = ["issuer", "claims"]
    )]
    pub token: Option<String>,
    /// The issuer of the hypothetical token (default: the claims' `iss`).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Claims of a hypothetical token as JSON, @FILE or @-: tests rules before any job
    /// runs (signature and times are not checked).
    #[arg(long, value_name = "JSON|@FILE")]
    pub claims: Option<String>,
    /// The identity the caller would name in the exchange.
    #[arg(long)]
    pub identity: Option<String>,
    /// The scope the exchange would ask for (judges allowedScopes).
    #[arg(long)]
    pub scope: Option<String>,
    /// The address the exchange would come from (judges sourceNetworks).
    #[arg(long, value_name = "IP")]
    pub source_address: Option<String>,
    // Last: the connection options come under their own help heading.
    #[command(flatten)]
    pub connection: Connection,
}

/// The `POST /v1/simulate` body for these flags.
pub fn simulate_request(args: &SimulateArgs) -> anyhow::Result<SimulateRequest> {
    let mut request = SimulateRequest {
        identity: args.identity.clone(),
        scope: args.scope.clone(),
        source_address: args.source_address.clone(),
        ..SimulateRequest::default()
    };
    if let Some(token) = &args.token {
        request.token = Some(read_value(token, "--token")?.trim().to_owned());
    }
    if let Some(claims) = &args.claims {
        let text = read_value(claims, "--claims")?;
        let claims: Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("--claims is not valid JSON: {e}"))?;
        if !claims.is_object() {
            bail!("--claims must be a JSON object of claims");
        }
        request.issuer = match (&args.issuer, claims.get("iss").and_then(Value::as_str)) {
            (Some(issuer), _) => Some(issuer.clone()),
            (None, Some(iss)) => Some(iss.to_owned()),
            (None, None) => bail!("pass --issuer, or put \"iss\" in --claims"),
        };
        request.claims = Some(claims);
    }
    Ok(request)
}

pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let request = simulate_request(&args)?;
    let conn = &args.connection;
    let (response, raw) = conn
        .client()?
        .call(Method::POST, &["v1", "simulate"], &[], Some(&request))
        .await?
        .parse::<SimulateResponse>()?;
    print_one(conn.output, &raw, || simulation_report(&response))
}

/// What a simulation found: the outcome, each check, the matches, and for near misses
/// the check (and expression clause) that failed.
pub fn simulation_report(r: &SimulateResponse) -> String {
    let mut out = fields(&[
        ("outcome", Some(r.outcome.clone())),
        ("description", Some(r.description.clone())),
        ("identity", r.identity.clone()),
    ]);
    if !r.checks.is_empty() {
        let mut table = Table::new(["CHECK", "RESULT", "DETAIL"]);
        for check in &r.checks {
            table.row([
                check.name.as_str(),
                check.result.as_str(),
                check.detail.as_deref().unwrap_or(""),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    out.push('\n');
    if r.matches.is_empty() {
        out.push_str("no federated credential matches\n");
    }
    for m in &r.matches {
        out.push_str(&output::clean(&format!(
            "match: {}/{}",
            m.identity, m.credential
        )));
        out.push('\n');
    }
    for miss in &r.near_misses {
        out.push_str(&near_miss_line(miss));
        out.push('\n');
    }
    out
}

/// `near miss: deploy/releases failed expression clause 2: claims['actor'] eq 'octocat'`,
/// with the server's detail on the next line.
pub fn near_miss_line(miss: &NearMiss) -> String {
    let mut line = format!(
        "near miss: {}/{} failed {}",
        miss.identity, miss.credential, miss.failed
    );
    match (&miss.clause, miss.clause_index) {
        (Some(clause), Some(index)) => line.push_str(&format!(" clause {index}: {clause}")),
        (Some(clause), None) => line.push_str(&format!(" clause: {clause}")),
        (None, _) if !miss.detail.is_empty() => {
            line.push_str(": ");
            line.push_str(&miss.detail);
            return output::clean(&line);
        }
        (None, _) => {}
    }
    let mut text = output::clean(&line);
    if !miss.detail.is_empty() {
        text.push_str("\n    ");
        text.push_str(&output::clean(&miss.detail));
    }
    text
}

// ---------------------------------------------------------------------------------------
// audit

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Events from this time on: a duration ago (15m, 2h, 7d), epoch seconds, or RFC 3339.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Events before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only events about this identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Only events for this token subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events with this outcome (`ok` or an error code).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only events of this kind: `exchange` (token exchanges) or `admin` (admin API
    /// writes and refused attempts).
    #[arg(long, value_parser = ["exchange", "admin"])]
    pub kind: Option<String>,
    /// Events per page.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this cursor (a previous page's `nextCursor`).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub after: Option<String>,
    /// Follow `nextCursor` to the last page.
    #[arg(long)]
    pub all: bool,
    // Last: the connection options come under their own help heading.
    #[command(flatten)]
    pub connection: Connection,
}

/// The `GET /v1/audit` query for these flags (without the cursor).
pub fn audit_query(args: &AuditArgs, now: u64) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut query = Vec::new();
    for (key, value) in [("since", &args.since), ("until", &args.until)] {
        if let Some(value) = value {
            let epoch = timespec::parse_when(value, now).map_err(|e| anyhow!("--{key}: {e}"))?;
            query.push((key, epoch.to_string()));
        }
    }
    for (key, value) in [
        ("kind", &args.kind),
        ("identity", &args.identity),
        ("subject", &args.subject),
        ("outcome", &args.outcome),
    ] {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    Ok(query)
}

pub async fn audit(args: AuditArgs, clock: SharedClock) -> anyhow::Result<()> {
    let conn = &args.connection;
    let client = conn.client()?;
    let base_query = audit_query(&args, clock.now())?;
    let mut cursor = args.after.clone();
    let mut events = Vec::new();
    let mut last;
    let mut seen = std::collections::HashSet::new();
    loop {
        let mut query: Vec<(&str, String)> = base_query.clone();
        if let Some(cursor) = &cursor {
            query.push(("after", cursor.clone()));
        }
        let (page, raw) = client
            .call(Method::GET, &["v1", "audit"], &query, None::<&()>)
            .await?
            .parse::<Collection<Value>>()?;
        events.extend(page.value);
        last = raw;
        match page.next_cursor {
            // A cursor seen before would loop forever; stop instead.
            Some(next) if args.all && seen.insert(next.clone()) => cursor = Some(next),
            next => {
                cursor = next;
                break;
            }
        }
    }
    let raw = if args.all {
        serde_json::json!({ "value": events })
    } else {
        last
    };
    print_one(conn.output, &raw, || audit_table(&events))?;
    if let (Some(cursor), false, Output::Table) = (&cursor, args.all, conn.output) {
        eprintln!(
            "more events: add --after {} or --all",
            output::clean(cursor)
        );
    }
    Ok(())
}

/// One row per event: when, what kind, the outcome, and who or what it was about.
pub fn audit_table(events: &[Value]) -> String {
    let mut table = Table::new([
        "TIME", "KIND", "OUTCOME", "ACTOR", "IDENTITY", "SUBJECT", "DETAIL",
    ]);
    for event in events {
        let time = match pick(event, &["time", "timestamp"]) {
            Some(Value::Number(n)) => n.as_u64().map(timespec::format_rfc3339),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let text = |keys: &[&str]| -> String {
            match pick(event, keys) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            }
        };
        let mut detail = text(&["action"]);
        for extra in [
            text(&["credential"]),
            text(&["reason", "description", "detail"]),
        ] {
            if !extra.is_empty() {
                if !detail.is_empty() {
                    detail.push(' ');
                }
                detail.push_str(&extra);
            }
        }
        table.row([
            time.unwrap_or_default(),
            text(&["kind"]),
            text(&["outcome"]),
            text(&["actor", "admin"]),
            text(&["identity"]),
            text(&["subject"]),
            detail,
        ]);
    }
    table.render()
}

fn pick<'a>(event: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| event.get(*k))
}

// ---------------------------------------------------------------------------------------
// admin-token

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Make a new admin token: prints the token (once) and its `tokens_file` line.
    New {
        /// Who holds the token (one word; it appears in the audit trail).
        #[arg(long)]
        name: String,
        /// What the token may do: admin (read and write) or reader (read, simulate).
        #[arg(long, value_parser = parse_role, value_name = "admin|reader")]
        role: Role,
    },
    /// Read a token on stdin and print its `sha256:HEX` for the `tokens_file`.
    Hash,
}

/// `sha256:HEX`, the form a `tokens_file` line holds: the server's own hash function, so
/// the CLI and the broker cannot disagree.
pub use wif_proto::admin::token_hash;

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "admin" => Ok(Role::Admin),
        "reader" => Ok(Role::Reader),
        other => Err(format!("{other:?} is not a role; use admin or reader")),
    }
}

/// A new admin token (see [`wif_proto::admin::new_admin_token`]).
pub fn new_admin_token() -> anyhow::Result<String> {
    wif_proto::admin::new_admin_token().map_err(|_| anyhow!("the system random source failed"))
}

/// The `tokens_file` line `ROLE NAME sha256:HEX` for a token.
pub fn tokens_file_line(role: Role, name: &str, token: &str) -> anyhow::Result<String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--name must be one word (no spaces), e.g. alice or ci-deployer");
    }
    Ok(format!("{} {name} {}", role.as_str(), token_hash(token)))
}

pub fn admin_token(command: AdminTokenCommand) -> anyhow::Result<()> {
    match command {
        AdminTokenCommand::New { name, role } => {
            // Check the name before making a token that could not be used.
            tokens_file_line(role, &name, "")?;
            let token = new_admin_token()?;
            let line = tokens_file_line(role, &name, &token)?;
            write_stdout(&format!("{token}\n"))?;
            eprintln!(
                "The token above is shown once; give it to {name}. \
                 Add this line to the [admin] tokens_file:\n{line}"
            );
            Ok(())
        }
        AdminTokenCommand::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the token from stdin")?;
            let token = text.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            write_stdout(&format!("{}\n", token_hash(token)))
        }
    }
}

// ---------------------------------------------------------------------------------------
// shared

/// `VALUE`, or the contents of `@FILE`, or stdin for `@-`.
fn read_value(value: &str, flag: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("{flag}: cannot read stdin"))?;
            Ok(text)
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}"))
        }
        None => Ok(value.to_owned()),
    }
}

/// A config enum from its wire name (`usgov`, `passthrough`), so the CLI accepts exactly
/// what the config file and the API do.
fn parse_wire<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|e| e.to_string())
}

fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn print_one(format: Output, raw: &Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    match format {
        Output::Json => write_stdout(&pretty(raw)),
        Output::Table => write_stdout(&table()),
    }
}

fn print_deleted(format: Output, message: &str) -> anyhow::Result<()> {
    match format {
        // 204 has no body; scripts go by the exit code.
        Output::Json => Ok(()),
        Output::Table => write_stdout(&format!("{message}\n")),
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use wif_proto::admin::{Check, CredentialRef};

    /// The admin commands as `wif-broker` parses them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Identity(IdentityArgs),
        Credential(CredentialArgs),
        Simulate(SimulateArgs),
        Audit(AuditArgs),
    }

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("wif-broker").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    fn create_request(args: &[&str]) -> CredentialRequest {
        let mut argv = vec!["credential", "create"];
        argv.extend(args);
        match parse(&argv) {
            Command::Credential(CredentialArgs {
                command:
                    CredentialCommand::Create {
                        name,
                        issuer,
                        fields,
                        ..
                    },
                ..
            }) => credential_request(RequestKind::Create, name, issuer, &fields).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn update_request(args: &[&str]) -> anyhow::Result<CredentialRequest> {
        let mut argv = vec!["credential", "update", "--identity", "deploy", "main"];
        argv.extend(args);
        match parse(&argv) {
            Command::Credential(CredentialArgs {
                command: CredentialCommand::Update { issuer, fields, .. },
                ..
            }) => credential_request(RequestKind::Update, None, issuer, &fields),
            other => panic!("{other:?}"),
        }
    }

    const GITHUB: &str = "https://token.actions.githubusercontent.com";

    #[test]
    fn az_style_flags_make_the_graph_body() {
        let request = create_request(&[
            "--identity",
            "deploy",
            "--name",
            "main",
            "--issuer",
            GITHUB,
            "--subject",
            "repo:contoso/app:ref:refs/heads/main",
            "--audiences",
            "api://AzureADTokenExchange",
            "api://Other",
            "--description",
            "deploys from main",
        ]);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({
                "name": "main",
                "issuer": GITHUB,
                "subject": "repo:contoso/app:ref:refs/heads/main",
                "audiences": ["api://AzureADTokenExchange", "api://Other"],
                "description": "deploys from main",
            })
        );
    }

    #[test]
    fn audiences_default_to_none_so_the_server_applies_its_own() {
        let request = create_request(&[
            "--identity",
            "deploy",
            "--name",
            "main",
            "--issuer",
            GITHUB,
            "--subject",
            "s",
        ]);
        assert_eq!(request.audiences, None);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"name": "main", "issuer": GITHUB, "subject": "s"})
        );
        let request = create_request(&[
            "--identity",
            "d",
            "--name",
            "n",
            "--issuer",
            GITHUB,
            "--subject",
            "s",
            "--audiences",
            "a,b",
        ]);
        assert_eq!(request.audiences, Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn an_expression_is_language_version_1_and_one_time_use_is_a_switch() {
        let request = create_request(&[
            "--identity",
            "deploy",
            "--name",
            "releases",
            "--issuer",
            GITHUB,
            "--claims-matching-expression",
            "claims['sub'] matches 'repo:contoso/*' and claims['actor'] eq 'octocat'",
            "--one-time-use",
        ]);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({
                "name": "releases",
                "issuer": GITHUB,
                "claimsMatchingExpression": {
                    "value": "claims['sub'] matches 'repo:contoso/*' and claims['actor'] eq 'octocat'",
                    "languageVersion": 1
                },
                "oneTimeUse": true,
            })
        );
    }

    #[test]
    fn create_needs_a_name_and_issuer_unless_given_parameters() {
        let argv = ["wif-broker", "credential", "create", "--identity", "d"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = [
            "wif-broker",
            "credential",
            "create",
            "--identity",
            "d",
            "--parameters",
            "{}",
            "--name",
            "x",
        ];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "flags and --parameters mix"
        );
        let argv = [
            "wif-broker",
            "credential",
            "create",
            "--identity",
            "d",
            "--name",
            "x",
            "--issuer",
            GITHUB,
            "--subject",
            "s",
            "--claims-matching-expression",
            "e",
        ];
        assert!(Cli::try_parse_from(argv).is_err(), "subject and expression");
    }

    #[test]
    fn graph_json_from_a_string() {
        let request = create_request(&[
            "--identity",
            "deploy",
            "--parameters",
            r#"{"name":"main","issuer":"https://token.actions.githubusercontent.com",
                "subject":"repo:contoso/app:environment:prod","description":"Prod",
                "audiences":["api://AzureADTokenExchange"]}"#,
        ]);
        assert_eq!(
            request,
            CredentialRequest {
                name: Some("main".into()),
                issuer: Some(GITHUB.into()),
                subject: Some(Some("repo:contoso/app:environment:prod".into())),
                audiences: Some(vec!["api://AzureADTokenExchange".into()]),
                description: Some(Some("Prod".into())),
                ..CredentialRequest::default()
            }
        );
    }

    #[test]
    fn graph_json_from_a_file_as_the_api_or_graph_shows_it() {
        // What `credential show -o json` prints, plus what Graph adds.
        let shown = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#x",
            "id": "6b3a8f38-4c43-4bd2-9d1c-5d0c4b1f8f1e",
            "name": "releases",
            "issuer": GITHUB,
            "subject": null,
            "claimsMatchingExpression": {"value": "claims['sub'] eq 'x'", "languageVersion": 1},
            "audiences": ["api://AzureADTokenExchange"],
            "description": null,
            "oneTimeUse": false,
            "readOnly": false
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fic.json");
        std::fs::write(&path, serde_json::to_string_pretty(&shown).unwrap()).unwrap();
        let at_path = format!("@{}", path.display());
        let request = create_request(&["--identity", "deploy", "--parameters", &at_path]);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({
                "name": "releases",
                "issuer": GITHUB,
                "claimsMatchingExpression": {"value": "claims['sub'] eq 'x'", "languageVersion": 1},
                "audiences": ["api://AzureADTokenExchange"],
                "oneTimeUse": false,
            })
        );
    }

    #[test]
    fn bad_graph_json_says_what_is_wrong() {
        let err = parse_parameters("{\"nmae\": \"x\"}", RequestKind::Create).unwrap_err();
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
        let err = parse_parameters("[1]", RequestKind::Create).unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
        let err = parse_parameters("{", RequestKind::Create).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = read_value("@/nonexistent/fic.json", "--parameters").unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/fic.json"),
            "{err:#}"
        );
    }

    #[test]
    fn a_patch_sends_only_what_changes_and_nulls_stay_clears() {
        assert_eq!(
            serde_json::to_value(update_request(&["--description", "new"]).unwrap()).unwrap(),
            json!({"description": "new"})
        );
        // Switching to an expression clears the subject in the same PATCH.
        assert_eq!(
            serde_json::to_value(
                update_request(&["--claims-matching-expression", "claims['sub'] eq 'x'"]).unwrap()
            )
            .unwrap(),
            json!({
                "subject": null,
                "claimsMatchingExpression": {"value": "claims['sub'] eq 'x'", "languageVersion": 1}
            })
        );
        assert_eq!(
            serde_json::to_value(
                update_request(&["--subject", "s", "--one-time-use=false"]).unwrap()
            )
            .unwrap(),
            json!({"subject": "s", "claimsMatchingExpression": null, "oneTimeUse": false})
        );
        assert_eq!(
            serde_json::to_value(
                update_request(&["--parameters", r#"{"description": null}"#]).unwrap()
            )
            .unwrap(),
            json!({"description": null})
        );
        let err = update_request(&[]).unwrap_err();
        assert!(err.to_string().contains("nothing to update"), "{err}");
    }

    #[test]
    fn identity_create_takes_the_config_names_for_cloud_and_assertion() {
        let Command::Identity(IdentityArgs {
            command:
                IdentityCommand::Create {
                    name,
                    cloud,
                    assertion,
                    ..
                },
            connection,
        }) = parse(&[
            "identity",
            "create",
            "deploy",
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--cloud",
            "usgov",
            "--server",
            "https://broker.example",
            "-o",
            "json",
        ])
        else {
            panic!()
        };
        assert_eq!(name, "deploy");
        assert_eq!(cloud, Some(Cloud::UsGov));
        assert_eq!(assertion, AssertionSource::Passthrough);
        assert_eq!(connection.server, "https://broker.example");
        assert_eq!(connection.output, Output::Json);
        let argv = [
            "wif-broker",
            "identity",
            "create",
            "d",
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--cloud",
            "mars",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn connection_options_work_before_or_after_the_subcommand() {
        for argv in [
            &["identity", "--server", "https://b.example", "list"][..],
            &["identity", "list", "--server", "https://b.example"][..],
        ] {
            let Command::Identity(args) = parse(argv) else {
                panic!()
            };
            assert_eq!(args.connection.server, "https://b.example");
        }
    }

    #[test]
    fn the_admin_token_can_come_from_a_file_and_is_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let at_path = format!("@{}", path.display());
        let Command::Identity(args) = parse(&["identity", "list", "--admin-token", &at_path])
        else {
            panic!()
        };
        wif_proto::crypto::install_provider();
        let client = args.connection.client().unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
        let Command::Identity(args) = parse(&["identity", "list", "--admin-token", "s3cret"])
        else {
            panic!()
        };
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn simulate_with_claims_takes_the_issuer_from_iss() {
        let Command::Simulate(args) = parse(&[
            "simulate",
            "--claims",
            r#"{"iss":"https://token.actions.githubusercontent.com","sub":"repo:a/b"}"#,
            "--identity",
            "deploy",
        ]) else {
            panic!()
        };
        let request = simulate_request(&args).unwrap();
        assert_eq!(request.issuer.as_deref(), Some(GITHUB));
        assert_eq!(request.identity.as_deref(), Some("deploy"));
        assert_eq!(request.token, None);
        assert_eq!(request.claims.unwrap()["sub"], "repo:a/b");

        let argv = [
            "wif-broker",
            "simulate",
            "--token",
            "x.y.z",
            "--claims",
            "{}",
        ];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "token or claims, not both"
        );
        assert!(Cli::try_parse_from(["wif-broker", "simulate"]).is_err());
    }

    #[test]
    fn audit_flags_become_the_query_with_epoch_seconds() {
        let Command::Audit(args) = parse(&[
            "audit",
            "--since",
            "2h",
            "--until",
            "2026-01-01T00:00:00Z",
            "--identity",
            "deploy",
            "--outcome",
            "ok",
            "--limit",
            "50",
        ]) else {
            panic!()
        };
        let now = 1_767_225_600;
        assert_eq!(
            audit_query(&args, now).unwrap(),
            vec![
                ("since", (now - 7200).to_string()),
                ("until", now.to_string()),
                ("identity", "deploy".to_string()),
                ("outcome", "ok".to_string()),
                ("limit", "50".to_string()),
            ]
        );
        let Command::Audit(args) = parse(&["audit", "--since", "yesterday"]) else {
            panic!()
        };
        let err = audit_query(&args, now).unwrap_err();
        assert!(err.to_string().starts_with("--since: "), "{err}");
    }

    #[test]
    fn token_hash_is_sha256_hex_of_the_utf8_bytes() {
        // FIPS 180-2 test vector.
        assert_eq!(
            token_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            token_hash(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn new_tokens_are_random_base64url_and_their_line_matches_the_hash() {
        let (a, b) = (new_admin_token().unwrap(), new_admin_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(
            tokens_file_line(Role::Reader, "alice", &a).unwrap(),
            format!("reader alice {}", token_hash(&a))
        );
        assert!(tokens_file_line(Role::Admin, "alice smith", &a).is_err());
        assert!(tokens_file_line(Role::Admin, "", &a).is_err());
    }

    fn identity() -> Identity {
        Identity {
            name: "deploy".into(),
            tenant_id: "72f988bf".into(),
            client_id: "3f1c2a9e".into(),
            cloud: Some(Cloud::Public),
            authority_host: "https://login.microsoftonline.com".into(),
            assertion: AssertionSource::Passthrough,
            assertion_subject: None,
            source: "api".into(),
            entra_federated_credential: None,
            read_only: false,
            disabled: false,
            allowed_scopes: Vec::new(),
            rate_limit: None,
            created_date_time: None,
            last_modified_date_time: None,
        }
    }

    #[test]
    fn identities_render_as_a_table_and_as_fields() {
        let mut from_file = identity();
        from_file.name = "legacy".into();
        from_file.cloud = None;
        from_file.authority_host = "https://login.example".into();
        from_file.source = "config".into();
        assert_eq!(
            identity_table(&[identity(), from_file]),
            "\
NAME    TENANT ID  CLIENT ID  AUTHORITY              ASSERTION    SOURCE
deploy  72f988bf   3f1c2a9e   public                 passthrough  api
legacy  72f988bf   3f1c2a9e   https://login.example  passthrough  config
"
        );
        let text = identity_fields(&identity());
        assert!(text.starts_with("name:           deploy\n"), "{text}");
        assert!(text.contains("cloud:          public\n"), "{text}");
        assert!(!text.contains("created"), "{text}");
    }

    #[test]
    fn credentials_render_with_what_they_match() {
        let credential = Credential {
            id: "6b3a".into(),
            name: "releases".into(),
            issuer: GITHUB.into(),
            subject: None,
            claims_matching_expression: Some(ClaimsMatchingExpression {
                value: "claims['sub'] eq 'x'".into(),
                language_version: 1,
            }),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
            one_time_use: false,
            read_only: false,
            disabled: false,
            allowed_scopes: Vec::new(),
            source_networks: Vec::new(),
            max_token_age_seconds: None,
            not_before: None,
            not_after: None,
            rate_limit: None,
        };
        assert_eq!(
            credential_table(std::slice::from_ref(&credential)),
            format!(
                "\
NAME      ISSUER{pad}MATCHES                          AUDIENCES                   ID
releases  {GITHUB}  expression claims['sub'] eq 'x'  api://AzureADTokenExchange  6b3a
",
                pad = " ".repeat(GITHUB.len() - 4)
            )
        );
        let text = credential_fields(&credential);
        assert!(
            text.contains("claimsMatchingExpression:  claims['sub'] eq 'x' (v1)\n"),
            "{text}"
        );
        assert!(!text.contains("subject"), "{text}");
    }

    #[test]
    fn a_simulation_names_the_failing_clause_of_a_near_miss() {
        let response = SimulateResponse {
            outcome: "no_matching_credential".into(),
            description: "no federated credential matches this token".into(),
            identity: None,
            checks: vec![
                Check {
                    name: "issuer".into(),
                    result: "passed".into(),
                    detail: Some(GITHUB.into()),
                },
                Check {
                    name: "match".into(),
                    result: "failed".into(),
                    detail: None,
                },
            ],
            matches: vec![],
            near_misses: vec![NearMiss {
                identity: "deploy".into(),
                credential: "releases".into(),
                failed: "expression".into(),
                clause: Some("claims['actor'] eq 'octocat'".into()),
                clause_index: Some(2),
                detail: "claims['actor'] is \"mallory\"".into(),
            }],
        };
        let text = simulation_report(&response);
        assert!(
            text.contains(
                "near miss: deploy/releases failed expression clause 2: claims['actor'] eq 'octocat'\n    claims['actor'] is \"mallory\"\n"
            ),
            "{text}"
        );
        assert!(
            text.starts_with("outcome:      no_matching_credential\n"),
            "{text}"
        );
        assert!(
            text.contains("CHECK   RESULT  DETAIL\nissuer  passed  https://"),
            "{text}"
        );
        assert!(text.contains("match   failed\n"), "{text}");
        assert!(text.contains("no federated credential matches\n"), "{text}");

        let ok = SimulateResponse {
            outcome: "ok".into(),
            description: "the exchange would act as deploy".into(),
            identity: Some("deploy".into()),
            checks: vec![],
            matches: vec![CredentialRef {
                identity: "deploy".into(),
                credential: "main".into(),
            }],
            near_misses: vec![NearMiss {
                identity: "deploy".into(),
                credential: "pr".into(),
                failed: "subject".into(),
                clause: None,
                clause_index: None,
                detail: "expected repo:a/b:pull_request".into(),
            }],
        };
        let text = simulation_report(&ok);
        assert!(text.contains("identity:     deploy\n"), "{text}");
        assert!(text.contains("match: deploy/main\n"), "{text}");
        assert!(
            text.contains("near miss: deploy/pr failed subject: expected repo:a/b:pull_request\n"),
            "{text}"
        );
    }

    #[test]
    fn audit_events_render_whatever_their_kind() {
        let events = [
            json!({"kind": "exchange", "time": 1_767_225_600u64, "outcome": "ok",
                   "identity": "deploy", "subject": "repo:a/b", "credential": "main"}),
            json!({"kind": "admin", "time": 1_767_225_660u64, "outcome": "ok",
                   "actor": "alice", "action": "credential.create", "identity": "deploy"}),
        ];
        assert_eq!(
            audit_table(&events),
            "\
TIME                  KIND      OUTCOME  ACTOR  IDENTITY  SUBJECT   DETAIL
2026-01-01T00:00:00Z  exchange  ok              deploy    repo:a/b  main
2026-01-01T00:01:00Z  admin     ok       alice  deploy              credential.create
"
        );
    }
}
