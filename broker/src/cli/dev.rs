//! `wif-broker dev` and `wif-broker dev token`: the local stack, and tokens from its
//! issuer for any subject and claims (so every credential of the stack can be tried).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::dev::{DEMO_SUBJECT, DEMO_TOKEN_SECS, MINT_PATH};

/// `wif-broker dev [--listen ADDR]`, or `wif-broker dev token ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    /// Where the broker listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: String,
    #[command(subcommand)]
    pub command: Option<DevCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Mint a token from a running dev stack's local issuer, for any subject and claims,
    /// and print it (the issuer's URL is printed by `wif-broker dev`).
    Token(DevTokenArgs),
}

#[derive(Debug, Args)]
pub struct DevTokenArgs {
    /// The dev stack's local issuer, as `wif-broker dev` prints it.
    #[arg(long, env = "WIF_DEV_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// The token's `sub`.
    #[arg(long, default_value = DEMO_SUBJECT, value_name = "SUBJECT")]
    pub sub: String,
    /// Another claim, NAME=VALUE (repeatable). VALUE is read as JSON when it parses
    /// (`run_number=3`, `groups=["a","b"]`), else as a string (`ref=refs/heads/main`).
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,
    /// How long the token stays valid, in seconds.
    #[arg(long, default_value_t = DEMO_TOKEN_SECS, value_name = "SECS")]
    pub lifetime: u64,
}

fn parse_claim(raw: &str) -> Result<(String, Value), String> {
    let (name, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{raw:?} has no claim name before '='"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((name.to_owned(), value))
}

/// How long minting may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The claims `dev token` asks the issuer to sign.
pub fn token_claims(args: &DevTokenArgs, now: u64) -> Value {
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(args.sub.as_str()));
    claims.insert("exp".into(), Value::from(now + args.lifetime));
    for (name, value) in &args.claims {
        claims.insert(name.clone(), value.clone());
    }
    Value::Object(claims)
}

/// Asks the dev stack's issuer for a token and prints it.
pub async fn token(args: DevTokenArgs, clock: SharedClock) -> anyhow::Result<()> {
    let Some(issuer) = args.issuer.as_deref() else {
        bail!(
            "no dev issuer: pass --issuer URL or set WIF_DEV_ISSUER; `wif-broker dev` prints \
             both (the \"local issuer\" line)"
        );
    };
    let base = url::Url::parse(issuer).with_context(|| format!("--issuer {issuer:?}"))?;
    if base.scheme() != "http" || !wif_config::is_loopback(&base) {
        bail!("--issuer {issuer} is not a dev stack issuer: it is always http on loopback");
    }
    let url = format!("{}{MINT_PATH}", issuer.trim_end_matches('/'));
    let http = crate::outbound::client(TIMEOUT, None)?;
    let answer = http
        .post(&url)
        .json(&token_claims(&args, clock.now()))
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach the dev issuer at {issuer}: {}; is `wif-broker dev` running?",
                crate::outbound::describe(&e)
            )
        })?;
    let status = answer.status();
    let body: Value = answer
        .json()
        .await
        .map_err(|_| anyhow!("{url} answered {status} without JSON: not a dev stack issuer?"))?;
    match body.get("token").and_then(Value::as_str) {
        Some(token) if status.is_success() => {
            println!("{token}");
            Ok(())
        }
        _ => bail!(
            "the dev issuer refused: {} ({}, request {})",
            text_field(&body, "error_description"),
            text_field(&body, "error"),
            text_field(&body, "request_id"),
        ),
    }
}

fn text_field(body: &Value, name: &str) -> String {
    crate::redact::untrusted(body.get(name).and_then(Value::as_str).unwrap_or("-"))
}
