//! What Entra must hold for an identity to work through the broker (the admin API's
//! `GET /v1/identities/{name}/entraSetup`, which `wif-broker entra plan` calls, and the
//! console's identity page). The answer's types are in [`wif_proto::entra_setup`].

use wif_config::AssertionSource;

use wif_proto::admin::{Credential, CredentialRequest, Identity};

use crate::policy;
pub use wif_proto::entra_setup::*;

const USE_BROKER: &str = "works only with the broker assertion (assertion: broker) or a managed identity as credential (managed_identity)";

/// What Entra must hold for `identity`, whose broker credentials are `credentials`.
pub fn plan(identity: &Identity, credentials: &[Credential]) -> EntraSetup {
    let mut setup = EntraSetup {
        identity: identity.name.clone(),
        tenant_id: identity.tenant_id.clone(),
        client_id: identity.client_id.clone(),
        assertion: wire(&identity.assertion),
        federated_identity_credentials: Vec::new(),
        broker_only: Vec::new(),
        notes: Vec::new(),
    };
    match identity.assertion {
        AssertionSource::Passthrough => passthrough(identity, credentials, &mut setup),
        AssertionSource::Broker => match &identity.entra_federated_credential {
            Some(c) => {
                let graph = CredentialRequest {
                    name: Some("wif-broker".into()),
                    issuer: Some(c.issuer.clone()),
                    subject: Some(Some(c.subject.clone())),
                    audiences: Some(c.audiences.clone()),
                    description: Some(Some(format!(
                        "Workloads the WIF broker maps onto identity {}",
                        identity.name
                    ))),
                    ..CredentialRequest::default()
                };
                setup
                    .federated_identity_credentials
                    .push(entry(identity, graph, None));
                setup.notes.push(format!(
                    "Entra fetches the broker's keys from {}/.well-known/openid-configuration: it must be reachable over https. The broker's own credentials ({}) need nothing in Entra.",
                    c.issuer,
                    credentials.len()
                ));
            }
            None => setup.notes.push(
                "this broker is not an issuer ([broker_issuer] url is not set), so the broker assertion cannot work".into(),
            ),
        },
        AssertionSource::ManagedIdentity => {
            let graph = CredentialRequest {
                name: Some("wif-broker-host".into()),
                issuer: Some(format!(
                    "{}/{}/v2.0",
                    identity.authority_host.trim_end_matches('/'),
                    identity.tenant_id
                )),
                subject: Some(Some(
                    "<principal (object) id of the broker host's managed identity>".into(),
                )),
                audiences: Some(vec![audience(identity)]),
                ..CredentialRequest::default()
            };
            setup
                .federated_identity_credentials
                .push(entry(identity, graph, None));
            setup.notes.push(
                "replace the subject with the principal id of the managed identity the broker runs as ([managed_identity] client_id): az identity show -n NAME -g GROUP --query principalId; Entra accepts it only in the same tenant".into(),
            );
        }
        AssertionSource::Certificate => setup.notes.push(format!(
            "no federated credential: upload the certificate's public part to the app (az ad app credential reset --id {} --cert @FILE --append)",
            identity.client_id
        )),
    }
    setup
}

/// The issuers for which Entra accepts a claims-matching expression, with the claims it
/// accepts in one: GitHub (`sub`, `job_workflow_ref`), GitLab and Terraform Cloud (`sub`).
fn entra_expression_claims(issuer: &str) -> Option<&'static [&'static str]> {
    const GITHUB: &str = "https://token.actions.githubusercontent.com";
    let github = issuer == GITHUB
        || issuer
            .strip_prefix(GITHUB)
            .is_some_and(|rest| rest.starts_with('/'));
    if github {
        Some(&["sub", "job_workflow_ref"])
    } else if issuer == "https://gitlab.com" || issuer == "https://app.terraform.io" {
        Some(&["sub"])
    } else {
        None
    }
}

/// Why Entra cannot hold a federated credential with this claims-matching `expression`
/// on `issuer` (so the identity needs the broker assertion), or `None` when it can.
pub fn entra_cannot_hold(issuer: &str, expression: &str) -> Option<String> {
    let advice = "Entra must hold the same credential when the identity uses the passthrough \
                  assertion; use the broker assertion instead (see docs/assertion-sources.md)";
    let Some(allowed) = entra_expression_claims(issuer) else {
        return Some(format!(
            "Entra accepts claims-matching expressions only for GitHub, GitLab and Terraform Cloud issuers, not {issuer:?}: {advice}"
        ));
    };
    let parsed = policy::ffl::Expression::parse(expression).ok()?;
    let other: Vec<String> = parsed
        .clauses()
        .iter()
        .map(|c| c.path.join("."))
        .filter(|claim| !allowed.contains(&claim.as_str()))
        .collect();
    (!other.is_empty()).then(|| {
        format!(
            "Entra accepts expressions on this issuer only on {}, not on {}: {advice}",
            allowed.join(" and "),
            other.join(", ")
        )
    })
}

fn passthrough(identity: &Identity, credentials: &[Credential], setup: &mut EntraSetup) {
    for c in credentials {
        let expression = c
            .claims_matching_expression
            .as_ref()
            .map(|e| e.value.as_str());
        if let Some(reason) = expression.and_then(|e| entra_cannot_hold(&c.issuer, e)) {
            setup.broker_only.push(BrokerOnly {
                credential: c.name.clone(),
                reason,
            });
            continue;
        }
        if setup.federated_identity_credentials.len() >= ENTRA_MAX_CREDENTIALS {
            setup.broker_only.push(BrokerOnly {
                credential: c.name.clone(),
                reason: format!(
                    "Entra holds at most {ENTRA_MAX_CREDENTIALS} federated credentials per identity; this one {USE_BROKER}"
                ),
            });
            continue;
        }
        let graph = CredentialRequest {
            name: Some(c.name.clone()),
            issuer: Some(c.issuer.clone()),
            subject: c.subject.clone().map(Some),
            claims_matching_expression: c.claims_matching_expression.clone().map(Some),
            audiences: Some(c.audiences.clone()),
            description: c.description.clone().map(Some),
            ..CredentialRequest::default()
        };
        setup
            .federated_identity_credentials
            .push(entry(identity, graph, Some(c.name.clone())));
    }
    if !setup.broker_only.is_empty() {
        setup.notes.push(format!(
            "with the passthrough assertion Entra checks every caller's token itself; {} of this identity's broker credentials {USE_BROKER}",
            setup.broker_only.len()
        ));
    }
}

fn entry(
    identity: &Identity,
    graph: CredentialRequest,
    broker_credential: Option<String>,
) -> EntraCredentialPlan {
    let json = serde_json::to_string(&graph).unwrap_or_default();
    let az_app_command = format!(
        "az ad app federated-credential create --id {} --parameters {}",
        quote(&identity.client_id),
        quote(&json)
    );
    let az_identity_command = match (&graph.subject, &graph.claims_matching_expression) {
        (Some(Some(subject)), None | Some(None)) => Some(format!(
            "az identity federated-credential create --name {} --identity-name <managed-identity-name> --resource-group <resource-group> --issuer {} --subject {} --audiences {}",
            quote(graph.name.as_deref().unwrap_or_default()),
            quote(graph.issuer.as_deref().unwrap_or_default()),
            quote(subject),
            graph
                .audiences
                .iter()
                .flatten()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        _ => None,
    };
    EntraCredentialPlan {
        graph,
        az_app_command,
        az_identity_command,
        broker_credential,
    }
}

fn audience(identity: &Identity) -> String {
    identity
        .cloud
        .unwrap_or(wif_config::Cloud::Public)
        .default_audience()
        .to_owned()
}

fn wire(source: &AssertionSource) -> String {
    serde_json::to_value(source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A POSIX shell word: as is when it is plainly safe, else in single quotes.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'=')
        });
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(
            quote("api://AzureADTokenExchange"),
            "api://AzureADTokenExchange"
        );
        assert_eq!(
            quote("repo:c/r:ref:refs/heads/main"),
            "repo:c/r:ref:refs/heads/main"
        );
        assert_eq!(quote(r#"{"a":"it's"}"#), r#"'{"a":"it'\''s"}'"#);
        assert_eq!(quote(""), "''");
    }
}
