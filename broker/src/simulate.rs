//! "Why was I denied?": runs the exchange's own checks ([`Broker::decide`]) on a token, or
//! on an issuer and claims before any job has run, through an observer that records each
//! check, and reports the credentials that match and near misses with the check or
//! expression clause that failed. Never calls Entra, never spends a one-time-use token or
//! the rate limits, changes nothing (docs/admin.md, "POST /v1/simulate").

use std::sync::Arc;

use serde_json::Value;

use crate::audit::AuditEvent;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Broker, ExchangeError, ExchangeRequest, Observer, Step};
use crate::policy::conditions;
use crate::token::{TokenError, UnverifiedToken, VerifiedToken};

/// The request and answer, wire types shared with the CLI (docs/admin.md).
pub use wif_proto::admin::{Check, CredentialRef, NearMiss, SimulateRequest, SimulateResponse};

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

/// Records each step of the exchange as a check.
struct Recorder {
    checks: Vec<Check>,
    /// Whether the scope and the client address were given (else their controls are
    /// skipped).
    scope_given: bool,
    client_given: bool,
    /// The token as read, for the issuer's check and near misses.
    parsed: Option<(String, Value)>,
    verified: Option<Arc<VerifiedToken>>,
}

impl Observer for Recorder {
    fn step(&mut self, step: Step, outcome: Result<(), &ExchangeError>) {
        let detail = outcome.err().map(ToString::to_string);
        match step {
            Step::Parse => self.checks.push(check("parse", outcome.is_ok(), detail)),
            Step::Issuer => {
                let detail = outcome.err().map(|_| {
                    format!(
                        "no federated credential names the issuer {:?}",
                        crate::redact::Untrusted::new(
                            self.parsed.as_ref().map_or("", |(iss, _)| iss.as_str())
                        )
                    )
                });
                self.checks.push(check("issuer", outcome.is_ok(), detail));
            }
            Step::Keys => self.checks.push(check("keys", outcome.is_ok(), detail)),
            Step::Verify => match outcome {
                Ok(()) => {
                    self.checks.push(check("signature", true, None));
                    self.checks.push(check("times", true, None));
                }
                Err(e) => {
                    let failed = match e {
                        ExchangeError::Token(t) => check_of(t),
                        _ => "signature",
                    };
                    if failed == "times" {
                        self.checks.push(check("signature", true, None));
                    }
                    self.checks.push(check(failed, false, detail));
                }
            },
            Step::Match => self.checks.push(check("match", outcome.is_ok(), detail)),
            // `simulate` names no tenant.
            Step::Tenant => {}
            Step::Conditions => self.controls(outcome),
        }
    }

    fn parsed(&mut self, token: &UnverifiedToken) {
        self.parsed = Some((token.iss.clone(), token.claims.value().clone()));
    }

    fn verified(&mut self, token: &Arc<VerifiedToken>) {
        self.verified = Some(token.clone());
    }

    fn dry_run(&self) -> bool {
        true
    }
}

impl Recorder {
    /// The least-privilege controls (docs/admin.md), one check each in the order the
    /// exchange applies them; a control without what it needs (no `scope`, no
    /// `sourceAddress` given) is skipped. The rate limits are never spent here.
    fn controls(&mut self, outcome: Result<(), &ExchangeError>) {
        let refusal = match outcome {
            Err(ExchangeError::Refused(r)) => Some(r),
            _ => None,
        };
        let failed = refusal.map(|r| r.control());
        let mut after_failure = false;
        for control in conditions::CONTROLS {
            let unjudged = match control {
                "sourceNetworks" if !self.client_given => Some("give sourceAddress to judge it"),
                "allowedScopes" if !self.scope_given => Some("give scope to judge it"),
                _ => None,
            };
            self.checks.push(if after_failure {
                skipped(control, "an earlier control refused")
            } else if Some(control) == failed {
                after_failure = true;
                check(control, false, refusal.map(ToString::to_string))
            } else if let Some(why) = unjudged {
                skipped(control, why)
            } else {
                check(control, true, None)
            });
        }
        self.checks.push(skipped(
            "rateLimit",
            "simulate never spends from the rate limits",
        ));
    }
}

pub async fn simulate(
    broker: &Broker,
    request: SimulateRequest,
) -> Result<SimulateResponse, ApiError> {
    let registry = broker.registry();
    let client = request
        .source_address
        .as_deref()
        .and_then(|a| a.trim().parse().ok());
    let scope = request
        .scope
        .as_deref()
        .and_then(|s| crate::entra::scope::to_default_scope(s).ok());
    let mut recorder = Recorder {
        checks: Vec::new(),
        scope_given: scope.is_some(),
        client_given: client.is_some(),
        parsed: None,
        verified: None,
    };
    // Never recorded: simulate decides nothing.
    let mut event = AuditEvent::default();
    let raw = request.token.clone().unwrap_or_default();
    let exchange = ExchangeRequest {
        endpoint: "/v1/simulate",
        request_id: "",
        token: &raw,
        scope: request.scope.as_deref(),
        identity: request.identity.as_deref(),
        tenant: None,
        client,
    };
    let decision = match (
        &request.token,
        request.issuer.clone(),
        request.claims.clone(),
    ) {
        (Some(_), None, None) => broker.decide(&exchange, &mut event, &mut recorder).await,
        (None, issuer, Some(claims)) => {
            let token = from_claims(issuer, claims)?;
            let known = registry.knows_issuer(&token.iss);
            recorder.checks.push(check(
                "issuer",
                known,
                (!known)
                    .then(|| format!("no federated credential names the issuer {:?}", token.iss)),
            ));
            if known {
                recorder
                    .checks
                    .push(skipped("signature", "claims were given, not a token"));
                recorder
                    .checks
                    .push(skipped("times", "claims were given, not a token"));
                event.scope = scope;
                broker.judge(Arc::new(token), &exchange, &mut event, &mut recorder)
            } else {
                recorder.verified = Some(Arc::new(token));
                Err(ExchangeError::UnknownIssuer)
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give `token`, or `claims` (with `issuer` or an `iss` claim)",
            ));
        }
    };
    // The credentials that match and the near misses, for the token (or claims) as far as
    // it got: an unknown issuer's near misses name issuers that differ only in case or a
    // trailing '/'.
    let explained = match (&recorder.verified, &recorder.parsed, &decision) {
        (Some(token), _, Err(ExchangeError::UnknownIssuer)) => {
            Some((Vec::new(), registry.explain(token).1))
        }
        (Some(token), _, _) => Some(registry.explain(token)),
        (None, Some((iss, claims)), Err(ExchangeError::UnknownIssuer)) => {
            let as_claims = from_claims(Some(iss.clone()), claims.clone())?;
            Some((Vec::new(), registry.explain(&as_claims).1))
        }
        _ => None,
    };
    let (matched, misses) = explained.unwrap_or_default();
    let (outcome, description, identity) = match decision {
        Ok(decision) => (
            "ok".to_owned(),
            format!(
                "an exchange would act as identity {:?}",
                decision.identity.name
            ),
            Some(decision.identity.name.clone()),
        ),
        Err(e) => {
            let e = e.classify();
            (e.code.as_str().to_owned(), e.description, None)
        }
    };
    Ok(SimulateResponse {
        outcome,
        description,
        identity,
        checks: recorder.checks,
        matches: matched
            .iter()
            .map(|c| CredentialRef {
                identity: c.identity.name.clone(),
                credential: c.name.to_string(),
            })
            .collect(),
        near_misses: near_misses(misses),
    })
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
        replay_id: String::new(),
        iss,
        aud,
        claims: claims.into(),
    })
}

fn near_misses(misses: Vec<crate::policy::registry::Miss>) -> Vec<NearMiss> {
    misses
        .into_iter()
        .map(|m| NearMiss {
            identity: m.credential.identity.name.clone(),
            credential: m.credential.name.to_string(),
            failed: m.check.to_owned(),
            clause_index: m.clause.as_ref().map(|(i, _)| *i),
            clause: m.clause.map(|(_, text)| text),
            detail: m.detail,
        })
        .collect()
}
