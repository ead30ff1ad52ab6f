//! The OpenAPI document, generated from the handlers' annotations and the wire types. A
//! copy is checked in as `docs/openapi.json`; a test fails when the two differ, so every
//! API change shows in review. Regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p wif-broker --lib openapi`.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "WIF Broker", description = "Workload-identity federation broker for Microsoft Entra"),
    paths(
        super::exchange::native,
        super::exchange::rfc8693,
        super::entra_compat::token,
        super::entra_compat::discovery,
        super::admin::list_identities,
        super::admin::get_identity,
        super::admin::put_identity,
        super::admin::delete_identity,
        super::admin::list_credentials,
        super::admin::get_credential,
        super::admin::create_credential,
        super::admin::update_credential,
        super::admin::delete_credential,
        super::admin::entra_setup,
        super::admin::simulate,
        super::admin::audit_events,
        super::well_known::discovery,
        super::well_known::jwks,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::openapi,
    ),
    modifiers(&Security),
    tags(
        (name = "exchange", description = "External OIDC token in, Entra access token out"),
        (name = "admin", description = "Identities, federated credentials, simulate, audit"),
        (name = "issuer", description = "The broker as an OIDC issuer of its own assertions"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "external_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The workload's OIDC token (GitHub Actions, Azure Pipelines, Kubernetes, ...)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A static admin token or an admin OIDC token ([admin] in the config)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The version is the crate's; keep the checked-in copy stable across releases.
    doc.info.version = "1".into();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is out of date; run UPDATE_OPENAPI=1 cargo test -p wif-broker --lib openapi and review the diff"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        for path in [
            "/v1/token",
            "/oauth2/token",
            "/v1/identities",
            "/v1/identities/{name}",
            "/v1/identities/{name}/federatedIdentityCredentials",
            "/v1/identities/{name}/federatedIdentityCredentials/{credential}",
            "/v1/simulate",
            "/v1/audit",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} is not in the OpenAPI document"
            );
        }
        // The webhook has its own listener (docs/kubernetes.md); the API does not serve it.
        assert!(doc["paths"].get("/mutate/v1/pods").is_none());
    }
}
