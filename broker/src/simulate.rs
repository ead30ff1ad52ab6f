//! "Why was I denied?": runs an exchange's checks on a token, or on an issuer and claims
//! before any job has run, and reports each check, the credentials that match, and near
//! misses with the check or expression clause that failed. Never calls Entra, never spends
//! a one-time-use token, changes nothing.

use crate::error::ErrorCode;
use serde_json::Value;

use crate::api::ApiError;
use crate::api::admin::model::{Check, CredentialRef, NearMiss, SimulateRequest, SimulateResponse};
use crate::exchange::{Broker, ExchangeError};
use std::sync::Arc;

use crate::policy::conditions::{self, Attempt, Refusal};
use crate::policy::{Identity, select_identity};
use crate::token::{self, TokenError, UnverifiedToken, VerifiedToken};

fn check(name: &str, passed: bool, detail: Option<String>) -> Check {
    Check {
        name: name.to_owned(),
        result: if passed { "passed" } else { "failed" }.to_owned(),
        detail,
    }
}

fn skipped(name: &str, why: &str) -> Check {
    Check {
        name: name.to_owned(),
        result: "skipped".to_owned(),
        detail: Some(why.to_owned()),
    }
}

fn refused(checks: Vec<Check>, error: ExchangeError) -> SimulateResponse {
    SimulateResponse {
        outcome: error.code().as_str().to_owned(),
        description: error.classify().description,
        identity: None,
        checks,
        matches: Vec::new(),
        near_misses: Vec::new(),
    }
}

/// Which check a verification error belongs to.
fn check_of(e: &TokenError) -> &'static str {
    match e {
        TokenError::ForbiddenAlgorithm(_)
        | TokenError::AlgorithmNotAllowed(_)
        | TokenError::AlgorithmKeyMismatch(_)
        | TokenError::BadSignature => "signature",
        TokenError::TooLarge { .. } | TokenError::Malformed(_) => "parse",
        TokenError::MissingClaim(_)
        | TokenError::Expired { .. }
        | TokenError::NotYetValid { .. }
        | TokenError::IssuedInFuture { .. }
        | TokenError::LifetimeTooLong { .. }
        | TokenError::RemainingTooLong { .. } => "times",
    }
}

/// Claims given directly: nothing to verify, but the fields matching needs must be there.
fn from_claims(issuer: Option<String>, claims: Value) -> Result<VerifiedToken, ApiError> {
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m.to_owned());
    if !claims.is_object() {
        return Err(bad("`claims` must be a JSON object"));
    }
    let iss = issuer
        .or_else(|| claims.get("iss").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| bad("give `issuer`, or an `iss` in `claims`"))?;
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        None => vec![crate::policy::rules::DEFAULT_AUDIENCE.to_owned()],
        Some(_) => return Err(bad("`aud` must be a string or an array of strings")),
    };
    let number = |name: &str| claims.get(name).and_then(Value::as_u64).unwrap_or(0);
    Ok(VerifiedToken {
        sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
        exp: number("exp"),
        iat: claims.get("iat").and_then(Value::as_u64),
        sha256: String::new(),
        signed_sha256: String::new(),
        iss,
        aud,
        claims,
    })
}

pub async fn simulate(
    broker: &Broker,
    request: SimulateRequest,
) -> Result<SimulateResponse, ApiError> {
    let registry = broker.registry();
    let mut checks = Vec::new();
    let verified = match (
        request.token.clone(),
        request.issuer.clone(),
        request.claims.clone(),
    ) {
        (Some(raw), None, None) => {
            let unverified = match UnverifiedToken::parse(&raw, broker.max_token_bytes()) {
                Ok(u) => u,
                Err(e) => {
                    checks.push(check("parse", false, Some(e.to_string())));
                    return Ok(refused(checks, e.into()));
                }
            };
            checks.push(check("parse", true, None));
            let known = registry.knows_issuer(&unverified.iss);
            checks.push(check(
                "issuer",
                known,
                (!known).then(|| {
                    format!(
                        "no federated credential names the issuer {:?}",
                        crate::redact::Untrusted::new(&unverified.iss)
                    )
                }),
            ));
            if !known {
                let mut answer = refused(checks, ExchangeError::UnknownIssuer);
                // Issuers that differ only in case or a trailing '/' are worth naming.
                let as_claims =
                    from_claims(Some(unverified.iss.clone()), unverified.claims.clone())?;
                answer.near_misses = near_misses(registry.explain(&as_claims).1);
                return Ok(answer);
            }
            let keys = match broker
                .keys()
                .keys_for(&unverified.iss, unverified.kid.as_deref())
                .await
            {
                Ok(keys) => keys,
                Err(e) => {
                    checks.push(check("keys", false, Some(e.to_string())));
                    return Ok(refused(checks, e.into()));
                }
            };
            checks.push(check("keys", true, None));
            let policy = broker.verify_policy(&unverified.iss);
            match token::verify(unverified, &keys, policy, broker.clock().now()) {
                Ok(v) => {
                    checks.push(check("signature", true, None));
                    checks.push(check("times", true, None));
                    v
                }
                Err(e) => {
                    let failed = check_of(&e);
                    if failed == "times" {
                        checks.push(check("signature", true, None));
                    }
                    checks.push(check(failed, false, Some(e.to_string())));
                    return Ok(refused(checks, e.into()));
                }
            }
        }
        (None, issuer, Some(claims)) => {
            let token = from_claims(issuer, claims)?;
            let known = registry.knows_issuer(&token.iss);
            checks.push(check(
                "issuer",
                known,
                (!known)
                    .then(|| format!("no federated credential names the issuer {:?}", token.iss)),
            ));
            if !known {
                let mut answer = refused(checks, ExchangeError::UnknownIssuer);
                answer.near_misses = near_misses(registry.explain(&token).1);
                return Ok(answer);
            }
            checks.push(skipped("signature", "claims were given, not a token"));
            checks.push(skipped("times", "claims were given, not a token"));
            token
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give `token`, or `claims` (with `issuer` or an `iss` claim)",
            ));
        }
    };
    let (matched, misses) = registry.explain(&verified);
    let decision = registry
        .matching(&verified)
        .map_err(ExchangeError::from)
        .and_then(|m| {
            select_identity(&m, request.identity.as_deref()).map_err(ExchangeError::from)
        });
    checks.push(check(
        "match",
        decision.is_ok(),
        decision.as_ref().err().map(|e| e.to_string()),
    ));
    let decision = match decision {
        Ok(identity) => controls(broker, &request, &verified, &identity, &mut checks)
            .map(|()| identity)
            .map_err(ExchangeError::from),
        Err(e) => Err(e),
    };
    let (outcome, description, identity) = match decision {
        Ok(identity) => (
            "ok".to_owned(),
            format!("an exchange would act as identity {:?}", identity.name),
            Some(identity.name.clone()),
        ),
        Err(e) => (e.code().as_str().to_owned(), e.classify().description, None),
    };
    Ok(SimulateResponse {
        outcome,
        description,
        identity,
        checks,
        matches: matched
            .iter()
            .map(|c| CredentialRef {
                identity: c.identity.name.clone(),
                credential: c.name.clone(),
            })
            .collect(),
        near_misses: near_misses(misses),
    })
}

/// The least-privilege controls (docs/admin.md), one check each in the order the exchange
/// applies them; a control without what it needs (no `scope`, no `sourceAddress` given)
/// is skipped. The rate limits are never spent here.
fn controls(
    broker: &Broker,
    request: &SimulateRequest,
    token: &VerifiedToken,
    identity: &Arc<Identity>,
    checks: &mut Vec<Check>,
) -> Result<(), Refusal> {
    let registry = broker.registry();
    let matched = registry.matching(token).unwrap_or_default();
    let scope = request
        .scope
        .as_deref()
        .map(crate::entra::scope::to_default_scope)
        .transpose()
        .unwrap_or(None);
    let client = request
        .source_address
        .as_deref()
        .and_then(|a| a.trim().parse().ok());
    let attempt = Attempt {
        now: broker.clock().now(),
        issued_at: token.iat,
        scope: scope.as_deref(),
        client,
        judge_source: client.is_some(),
    };
    let result = conditions::choose_credential(identity, &matched, &attempt);
    let failed = result.as_ref().err().map(|(r, _)| r.control());
    let mut after_failure = false;
    for control in conditions::CONTROLS {
        let unjudged = match control {
            "sourceNetworks" if client.is_none() => Some("give sourceAddress to judge it"),
            "allowedScopes" if scope.is_none() => Some("give scope to judge it"),
            _ => None,
        };
        checks.push(if after_failure {
            skipped(control, "an earlier control refused")
        } else if Some(control) == failed {
            after_failure = true;
            let detail = result.as_ref().err().map(|(r, _)| r.to_string());
            check(control, false, detail)
        } else if let Some(why) = unjudged {
            skipped(control, why)
        } else {
            check(control, true, None)
        });
    }
    checks.push(skipped(
        "rateLimit",
        "simulate never spends from the rate limits",
    ));
    result.map(drop).map_err(|(refusal, _)| refusal)
}

fn near_misses(misses: Vec<crate::policy::registry::Miss>) -> Vec<NearMiss> {
    misses
        .into_iter()
        .map(|m| NearMiss {
            identity: m.credential.identity.name.clone(),
            credential: m.credential.name.clone(),
            failed: m.check.to_owned(),
            clause_index: m.clause.as_ref().map(|(i, _)| *i),
            clause: m.clause.map(|(_, text)| text),
            detail: m.detail,
        })
        .collect()
}
