//! Kubernetes service-account tokens from managed clusters (AKS, whose issuer ends in `/`;
//! EKS; GKE) and from a private cluster whose keys the operator supplies.

use serde_json::{Value, json};
use wif_broker::dev::jwt::KeyKind;

use crate::farm::*;

const AKS: &str = "https://westeurope.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/5c0e1a2b-3d4f-4a5b-8c6d-7e8f9a0b1c2d/";
const EKS: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/B3C8C1D2E4F5A6B7C8D9E0F1A2B3C4D5";
const GKE: &str = "https://container.googleapis.com/v1/projects/contoso-prod/locations/europe-west1/clusters/payments";
const KIND: &str = "https://kubernetes.default.svc.cluster.local";

/// A projected service-account token for `namespace`/`account`, audience Entra's: `aud`
/// is an array, the pod and node it is bound to are under `kubernetes.io`.
fn service_account_claims(iss: &str, namespace: &str, account: &str) -> Value {
    let iat = now();
    json!({
        "aud": [EXCHANGE_AUDIENCE],
        "exp": iat + 3600,
        "iat": iat,
        "iss": iss,
        "jti": format!("e51f1fbc-4733-4b85-a59f-{:012x}", iat),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "aks-nodepool1-12345678-vmss000000", "uid": "517eb86e-b863-451b-bf70-86cb61439a3a"},
            "pod": {"name": format!("{account}-7d4b9c6f5-x2x9q"), "uid": "0d8b260e-ef0e-45fb-be8e-ff44f97722e8"},
            "serviceaccount": {"name": account, "uid": "e6a8680e-d103-4cce-80ea-03acbbeacf7d"},
        },
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
    })
}

fn cluster(iss: &str, jwks_uri: &str) -> Issuer {
    Issuer::new(
        iss,
        jwks_uri,
        &[KeyKind::Rsa2048],
        Header::Kid,
        JwkStyle::WithAlg,
    )
}

#[tokio::test]
async fn aks_eks_gke_and_a_private_cluster_with_operator_supplied_keys() {
    let aks = cluster(AKS, &format!("{AKS}openid/v1/jwks"));
    let eks = cluster(EKS, &format!("{EKS}/keys"));
    let gke = cluster(GKE, &format!("{GKE}/jwks"));
    // A kind cluster: its issuer is a name only pods resolve; the broker gets the keys
    // from a file the operator copied out of the cluster (`kubectl get --raw
    // /openid/v1/jwks`).
    let mut kind = cluster(KIND, &format!("{KIND}/openid/v1/jwks"));
    kind.discovery = None;
    let farm = Farm::start(&[&aks, &eks, &gke], &[]).await;
    let jwks_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jwks_file.path(), kind.jwks().to_string()).unwrap();
    let issuers = format!(
        "[[issuers]]\nurl = \"{KIND}\"\njwks_file = \"{}\"\n",
        jwks_file.path().display()
    );
    let m = Matrix::start(
        farm,
        &[
            Identity {
                name: "aks-payments",
                credentials: vec![Cred::subject(
                    "payments-api",
                    AKS,
                    "system:serviceaccount:payments:api",
                )],
            },
            Identity {
                name: "eks-payments",
                credentials: vec![Cred::expression(
                    "payments-namespace",
                    EKS,
                    "claims['kubernetes.io']['namespace'] eq 'payments'",
                )],
            },
            Identity {
                name: "gke-payments",
                credentials: vec![Cred::subject(
                    "payments-api",
                    GKE,
                    "system:serviceaccount:payments:api",
                )],
            },
            Identity {
                name: "kind-payments",
                credentials: vec![Cred::expression(
                    "payments-api",
                    KIND,
                    "claims['kubernetes.io']['namespace'] eq 'payments' and \
                     claims['kubernetes.io']['serviceaccount']['name'] eq 'api'",
                )],
            },
        ],
        &issuers,
    )
    .await;

    for (issuer, identity) in [
        (&aks, "aks-payments"),
        (&eks, "eks-payments"),
        (&gke, "gke-payments"),
        (&kind, "kind-payments"),
    ] {
        let token = issuer.mint(&service_account_claims(&issuer.iss, "payments", "api"));
        m.admits(&token, identity).await;
        let other = issuer.mint(&service_account_claims(&issuer.iss, "default", "api"));
        m.refuses(&other, 403, "no_matching_credential", NO_MATCH)
            .await;
    }
    // AKS's discovery document sits under its issuer's trailing `/`, not after `//`.
    let asked = m.farm.asked();
    for url in [
        format!("{AKS}.well-known/openid-configuration"),
        format!("{AKS}openid/v1/jwks"),
        format!("{EKS}/.well-known/openid-configuration"),
        format!("{EKS}/keys"),
        format!("{GKE}/.well-known/openid-configuration"),
        format!("{GKE}/jwks"),
    ] {
        assert!(asked.contains(&url), "{url} not fetched: {asked:?}");
    }
    assert!(
        !m.proxy
            .connects()
            .iter()
            .any(|c| c.starts_with("kubernetes.default.svc")),
        "the private cluster's issuer was contacted: {:?}",
        m.proxy.connects()
    );

    m.refuses_near_misses(
        &aks,
        &service_account_claims(AKS, "payments", "api"),
        &[
            AKS.trim_end_matches('/'),
            AKS.replace("westeurope", "WestEurope").as_str(),
        ],
    )
    .await;
    m.refuses_near_misses(
        &eks,
        &service_account_claims(EKS, "payments", "api"),
        &[EKS.to_lowercase().as_str(), format!("{EKS}/").as_str()],
    )
    .await;
    m.refuses_near_misses(
        &gke,
        &service_account_claims(GKE, "payments", "api"),
        &[
            format!("{GKE}/").as_str(),
            "https://container.googleapis.com/v1/projects/contoso-prod/locations/europe-west1-b/clusters/payments",
        ],
    )
    .await;
    m.refuses_near_misses(
        &kind,
        &service_account_claims(KIND, "payments", "api"),
        &[
            "https://kubernetes.default.svc",
            "https://kubernetes.default.svc.cluster.local/",
        ],
    )
    .await;
}
