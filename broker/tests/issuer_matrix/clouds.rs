//! Cloud workload identities: Google service accounts, AWS IAM roles (outbound identity
//! federation), SPIFFE workloads (SPIRE), and Entra's own managed identities.

use serde_json::{Value, json};
use wif_broker::dev::jwt::KeyKind;

use crate::ci::entra_issuer;
use crate::farm::*;

const GOOGLE: &str = "https://accounts.google.com";
const DEPLOYER: &str = "deployer@contoso-prod.iam.gserviceaccount.com";
const DEPLOYER_ID: &str = "113485839152964287450";

/// A Google service account's ID token for `aud`: `sub` and `azp` are the account's
/// numeric id, `email` its address; no `nbf`, no `jti`.
fn google_claims(sub: &str, email: &str, aud: &str) -> Value {
    let iat = now();
    json!({
        "aud": aud,
        "azp": sub,
        "email": email,
        "email_verified": true,
        "exp": iat + 3600,
        "iat": iat,
        "iss": GOOGLE,
        "sub": sub,
    })
}

#[tokio::test]
async fn google_service_account_id_tokens_with_keys_on_another_host() {
    // Google's discovery document names keys on www.googleapis.com.
    let google = Issuer::new(
        GOOGLE,
        "https://www.googleapis.com/oauth2/v3/certs",
        &[KeyKind::Rsa2048, KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let m = Matrix::start(
        Farm::start(&[&google], &[]).await,
        &[
            Identity {
                name: "google-deployer",
                credentials: vec![Cred::subject("deployer", GOOGLE, DEPLOYER_ID)],
            },
            Identity {
                name: "google-by-email",
                credentials: vec![
                    Cred::expression(
                        "reporter",
                        GOOGLE,
                        "claims['email'] eq 'reporter@contoso-prod.iam.gserviceaccount.com' and \
                         claims['email_verified'] eq 'true'",
                    )
                    .audience("https://broker.contoso.example"),
                ],
            },
        ],
        // As docs/configuration.md says for this issuer: name the key location.
        "[[issuers]]\nurl = \"https://accounts.google.com\"\njwks_uri = \"https://www.googleapis.com/oauth2/v3/certs\"\n",
    )
    .await;

    m.admits(
        &google.mint(&google_claims(DEPLOYER_ID, DEPLOYER, EXCHANGE_AUDIENCE)),
        "google-deployer",
    )
    .await;
    // Google rotates between two published keys.
    let reporter = google_claims(
        "104432790512319873365",
        "reporter@contoso-prod.iam.gserviceaccount.com",
        "https://broker.contoso.example",
    );
    m.admits(&google.mint_with(1, &reporter), "google-by-email")
        .await;
    assert_eq!(
        m.farm.asked(),
        ["https://www.googleapis.com/oauth2/v3/certs".to_owned()],
        "keys come from the configured jwks_uri, without discovery"
    );

    let stranger = google.mint(&google_claims(
        "100000000000000000001",
        "stranger@elsewhere.iam.gserviceaccount.com",
        EXCHANGE_AUDIENCE,
    ));
    m.refuses(&stranger, 403, "no_matching_credential", NO_MATCH)
        .await;
    let wrong_audience = google.mint(&google_claims(
        DEPLOYER_ID,
        DEPLOYER,
        "https://broker.contoso.example",
    ));
    m.refuses(&wrong_audience, 401, "invalid_audience", EXCHANGE_AUDIENCE)
        .await;

    // Google's older tokens name the issuer without a scheme; credentials are https URLs.
    m.refuses_near_misses(
        &google,
        &google_claims(DEPLOYER_ID, DEPLOYER, EXCHANGE_AUDIENCE),
        &["accounts.google.com", "https://accounts.google.com/"],
    )
    .await;
}

const AWS: &str = "https://a8c1f2e3-4b5d-4e6f-8a9b-0c1d2e3f4a5b.tokens.sts.global.api.aws";
const ROLE: &str = "arn:aws:iam::123456789012:role/DataProcessingRole";

/// An AWS STS `GetWebIdentityToken` token for `role`: no `nbf`, AWS's own claims nested
/// under `https://sts.amazonaws.com/`.
fn aws_claims(role: &str, account: &str) -> Value {
    let iat = now();
    json!({
        "iss": AWS,
        "aud": EXCHANGE_AUDIENCE,
        "sub": role,
        "iat": iat,
        "exp": iat + 300,
        "jti": format!("xyz123-def456-{iat}"),
        "https://sts.amazonaws.com/": {
            "aws_account": account,
            "source_region": "eu-west-1",
            "org_id": "o-abc1234567",
            "ou_path": "o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/",
            "principal_tags": {"environment": "production", "team": "data-engineering"},
            "lambda_source_function_arn": format!("arn:aws:lambda:eu-west-1:{account}:function:process-data"),
        },
    })
}

#[tokio::test]
async fn aws_outbound_web_identity_tokens_signed_es384_and_rs256() {
    let aws = Issuer::new(
        AWS,
        &format!("{AWS}/.well-known/jwks.json"),
        &[KeyKind::EcP384, KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::NoAlg,
    );
    let m = Matrix::start(
        Farm::start(&[&aws], &[]).await,
        &[
            Identity {
                name: "aws-role",
                credentials: vec![Cred::subject("data-processing", AWS, ROLE)],
            },
            Identity {
                name: "aws-account",
                credentials: vec![Cred::expression(
                    "production-roles",
                    AWS,
                    "claims['sub'] matches 'arn:aws:iam::210987654321:role/*' and \
                     claims['https://sts.amazonaws.com/']['principal_tags']['environment'] eq 'production'",
                )],
            },
        ],
        "",
    )
    .await;

    // The caller chooses the algorithm: ES384 or RS256.
    m.admits(
        &aws.mint_with(0, &aws_claims(ROLE, "123456789012")),
        "aws-role",
    )
    .await;
    m.admits(
        &aws.mint_with(1, &aws_claims(ROLE, "123456789012")),
        "aws-role",
    )
    .await;
    let other_account = aws_claims("arn:aws:iam::210987654321:role/Reporting", "210987654321");
    m.admits(&aws.mint_with(0, &other_account), "aws-account")
        .await;

    let mut staging = other_account.clone();
    staging["https://sts.amazonaws.com/"]["principal_tags"]["environment"] = json!("staging");
    m.refuses(&aws.mint(&staging), 403, "no_matching_credential", NO_MATCH)
        .await;
    let other_role = aws_claims("arn:aws:iam::123456789012:role/Other", "123456789012");
    m.refuses(
        &aws.mint(&other_role),
        403,
        "no_matching_credential",
        NO_MATCH,
    )
    .await;

    m.refuses_near_misses(
        &aws,
        &aws_claims(ROLE, "123456789012"),
        &[
            format!("{AWS}/").as_str(),
            AWS.to_uppercase().replace("HTTPS://", "https://").as_str(),
            "https://tokens.sts.global.api.aws",
        ],
    )
    .await;
}

const SPIRE: &str = "https://oidc.spire.contoso.example";
const SPIFFE_ID: &str = "spiffe://contoso.example/ns/payments/sa/api";

/// A JWT-SVID as SPIRE mints it with `jwt_issuer` set: `aud` an array, `iat` and `exp`,
/// no `nbf`, no `jti`.
fn svid_claims(sub: &str) -> Value {
    let iat = now();
    json!({"aud": [EXCHANGE_AUDIENCE], "exp": iat + 300, "iat": iat, "iss": SPIRE, "sub": sub})
}

#[tokio::test]
async fn spiffe_jwt_svids_from_spire_es256_and_rs256() {
    let spire = Issuer::new(
        SPIRE,
        &format!("{SPIRE}/keys"),
        &[KeyKind::EcP256, KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::NoAlg,
    );
    let m = Matrix::start(
        Farm::start(&[&spire], &[]).await,
        &[
            Identity {
                name: "spiffe-api",
                credentials: vec![Cred::subject("payments-api", SPIRE, SPIFFE_ID)],
            },
            Identity {
                name: "spiffe-namespace",
                credentials: vec![Cred::expression(
                    "billing",
                    SPIRE,
                    "claims['sub'] matches 'spiffe://contoso.example/ns/billing/*'",
                )],
            },
        ],
        "",
    )
    .await;

    m.admits(&spire.mint_with(0, &svid_claims(SPIFFE_ID)), "spiffe-api")
        .await;
    m.admits(&spire.mint_with(1, &svid_claims(SPIFFE_ID)), "spiffe-api")
        .await;
    m.admits(
        &spire.mint(&svid_claims(
            "spiffe://contoso.example/ns/billing/sa/worker",
        )),
        "spiffe-namespace",
    )
    .await;
    // The JWT-SVID format requires only `sub`, `aud` and `exp`: one without `iat` is
    // admitted, and without `iat` its remaining life is what the lifetime cap bounds.
    let mut minimal = svid_claims(SPIFFE_ID);
    minimal.as_object_mut().unwrap().remove("iat");
    m.admits(&spire.mint(&minimal), "spiffe-api").await;
    minimal["exp"] = json!(now() + 26 * 3600);
    m.refuses(
        &spire.mint(&minimal),
        401,
        "token_lifetime_too_long",
        "no `iat`",
    )
    .await;

    let other = spire.mint(&svid_claims("spiffe://contoso.example/ns/default/sa/api"));
    m.refuses(&other, 403, "no_matching_credential", NO_MATCH)
        .await;
    // SPIRE without `jwt_issuer` mints SVIDs without `iss`: nothing names their issuer.
    let mut no_iss = svid_claims(SPIFFE_ID);
    no_iss.as_object_mut().unwrap().remove("iss");
    m.refuses(&spire.mint(&no_iss), 401, "missing_claim", "iss")
        .await;

    // The trust domain is not the issuer.
    m.refuses_near_misses(
        &spire,
        &svid_claims(SPIFFE_ID),
        &[
            "https://oidc.spire.contoso.example/",
            "spiffe://contoso.example",
        ],
    )
    .await;
}

const MI_OBJECT_ID: &str = "8b9ea2e4-534a-46bb-b3c7-4027969d271c";
const MI_CLIENT_ID: &str = "9d17cc32-c91b-4368-8494-1b29ccb0dbcf";

/// A managed identity's token for `api://AzureADTokenExchange` as Entra issues it, in the
/// v2.0 shape: `aud` is the token-exchange app's id, `sub` and `oid` the identity's
/// object id, no `jti`.
fn managed_identity_v2(iss: &str, object_id: &str) -> Value {
    let iat = now();
    json!({
        "aud": "fb60f99c-7a34-4190-8149-302f77469936",
        "iss": iss,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 86_400,
        "aio": "k2JgYAjuXPb29rw5QY0JoaHm6QKBYfecPe9IOJWLNp/W0mEOPwEA",
        "azp": MI_CLIENT_ID,
        "azpacr": "2",
        "idtyp": "app",
        "oid": object_id,
        "rh": "1.AVkBXKNpU6VGd0aP-S5lWHZU55z5YPs0epBBgUkwL3dGmTZZAQBZAQ.",
        "sub": object_id,
        "tid": TENANT,
        "uti": "OQZCL2CY80uXMgjZyL4OAA",
        "ver": "2.0",
        "xms_mirid": "/subscriptions/1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9/resourcegroups/payments/providers/Microsoft.ManagedIdentity/userAssignedIdentities/payments-mi",
    })
}

/// The same identity's token in the v1.0 shape: issuer `https://sts.windows.net/{tenant}/`
/// (with its `/`), `aud` the audience as requested, `appid` instead of `azp`.
fn managed_identity_v1(iss: &str, object_id: &str) -> Value {
    let iat = now();
    json!({
        "aud": EXCHANGE_AUDIENCE,
        "iss": iss,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 86_400,
        "aio": "E2RgYGjn3Mu9zn4lvQ0kq9dsyuAtAA==",
        "appid": MI_CLIENT_ID,
        "appidacr": "2",
        "idp": iss,
        "idtyp": "app",
        "oid": object_id,
        "rh": "0.AVkBXKNpU6VGd0aP-S5lWHZU5wMAAAAAAAAAwAAAAAAAAABZAQA.",
        "sub": object_id,
        "tid": TENANT,
        "uti": "maB3hBIhg0CQBpx3VazvAA",
        "ver": "1.0",
    })
}

#[tokio::test]
async fn entra_managed_identity_tokens_v2_and_v1() {
    let v2 = entra_issuer(TENANT);
    // v1.0 tokens are signed with the same keys, published under /common.
    let v1_iss = format!("https://sts.windows.net/{TENANT}/");
    let v1 = Issuer {
        keys: v2.keys.clone(),
        ..Issuer::new(
            &v1_iss,
            "https://login.microsoftonline.com/common/discovery/keys",
            &[],
            Header::KidTypX5t,
            JwkStyle::Entra,
        )
    };
    let m = Matrix::start(
        Farm::start(&[&v2, &v1], &[]).await,
        &[
            Identity {
                name: "mi-v2",
                credentials: vec![Cred::subject("payments-mi", &v2.iss, MI_OBJECT_ID)],
            },
            Identity {
                name: "mi-v1",
                credentials: vec![Cred::subject("payments-mi", &v1_iss, MI_OBJECT_ID)],
            },
        ],
        // The v1.0 discovery document names keys on login.microsoftonline.com.
        &format!(
            "[[issuers]]\nurl = \"{v1_iss}\"\njwks_uri = \"https://login.microsoftonline.com/common/discovery/keys\"\n"
        ),
    )
    .await;

    // The credential's audience is api://AzureADTokenExchange (the default, as in Entra);
    // the v2.0 token carries the token-exchange app's id instead.
    m.admits(
        &v2.mint(&managed_identity_v2(&v2.iss, MI_OBJECT_ID)),
        "mi-v2",
    )
    .await;
    m.admits(
        &v1.mint(&managed_identity_v1(&v1_iss, MI_OBJECT_ID)),
        "mi-v1",
    )
    .await;

    let other_identity = "5081ddac-3d33-4766-98fe-80c38c5ce554";
    let other = v2.mint(&managed_identity_v2(&v2.iss, other_identity));
    m.refuses(&other, 403, "no_matching_credential", NO_MATCH)
        .await;
    // A token for another resource is not an assertion.
    let mut graph = managed_identity_v2(&v2.iss, MI_OBJECT_ID);
    graph["aud"] = json!("00000003-0000-0000-c000-000000000000");
    m.refuses(&v2.mint(&graph), 401, "invalid_audience", EXCHANGE_AUDIENCE)
        .await;

    m.refuses_near_misses(
        &v2,
        &managed_identity_v2(&v2.iss, MI_OBJECT_ID),
        &[
            format!("{}/", v2.iss).as_str(),
            format!(
                "https://login.microsoftonline.com/{}/v2.0",
                TENANT.to_uppercase()
            )
            .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0",
        ],
    )
    .await;
    m.refuses_near_misses(
        &v1,
        &managed_identity_v1(&v1_iss, MI_OBJECT_ID),
        &[
            v1_iss.trim_end_matches('/'),
            format!("https://login.microsoftonline.com/{TENANT}/").as_str(),
        ],
    )
    .await;
}

#[tokio::test]
async fn keys_on_another_host_are_fetched_only_where_the_operator_names_them() {
    // Google's and Entra v1.0's discovery documents name keys on another host. Without
    // an `[[issuers]] jwks_uri` the broker does not follow them there.
    let google = Issuer::new(
        GOOGLE,
        "https://www.googleapis.com/oauth2/v3/certs",
        &[KeyKind::Rsa2048],
        Header::KidTyp,
        JwkStyle::WithAlg,
    );
    let v1_iss = format!("https://sts.windows.net/{TENANT}/");
    let v1 = Issuer::new(
        &v1_iss,
        "https://login.microsoftonline.com/common/discovery/keys",
        &[KeyKind::Rsa2048],
        Header::KidTypX5t,
        JwkStyle::Entra,
    );
    let m = Matrix::start(
        Farm::start(&[&google, &v1], &[]).await,
        &[
            Identity {
                name: "google-deployer",
                credentials: vec![Cred::subject("deployer", GOOGLE, DEPLOYER_ID)],
            },
            Identity {
                name: "mi-v1",
                credentials: vec![Cred::subject("payments-mi", &v1_iss, MI_OBJECT_ID)],
            },
        ],
        "",
    )
    .await;

    let tokens = [
        google.mint(&google_claims(DEPLOYER_ID, DEPLOYER, EXCHANGE_AUDIENCE)),
        v1.mint(&managed_identity_v1(&v1_iss, MI_OBJECT_ID)),
    ];
    for token in &tokens {
        let answer = m
            .refuses(token, 503, "issuer_unavailable", "cannot be fetched")
            .await;
        assert!(answer.headers.contains_key("retry-after"));
    }
    let asked = m.farm.asked();
    assert!(asked.contains(&format!("{GOOGLE}/.well-known/openid-configuration")));
    assert!(asked.contains(&format!("{v1_iss}.well-known/openid-configuration")));
    assert!(
        !asked
            .iter()
            .any(|url| url.contains("certs") || url.contains("/keys")),
        "keys were fetched from another host: {asked:?}"
    );
    // The operator's log says what to configure.
    let log = m.broker.output();
    assert!(
        log.contains("allow_cross_origin_jwks_uri or jwks_uri"),
        "{log}"
    );
}
