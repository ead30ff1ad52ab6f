//! The one HTTP error type, [`crate::error::ApiError`], at the edge.
//!
//! Every error leaves the broker as `{"error", "error_description", "request_id"}` with a
//! stable snake_case `error` code and a status that fits (400/401/403/404/409/413/429/502/
//! 503). Each part classifies its own errors once (`ExchangeError::classify`,
//! `AdminError::classify`, ...); this module only names the conversions.

pub use crate::error::{
    ApiError, ErrorCode, OAuthError, REQUEST_ID, STORE_UNAVAILABLE, current_request_id,
};

/// The error shape, for the OpenAPI document and for clients (the server writes its own).
pub use wif_proto::error::{ErrorBody, FieldError};

/// For a store failure shown to a caller (the console's error pages): logs the detail
/// and returns [`STORE_UNAVAILABLE`].
pub fn store_failure(e: &crate::store::StoreError) -> String {
    ApiError::store(e).description
}

impl From<crate::exchange::ExchangeError> for ApiError {
    fn from(e: crate::exchange::ExchangeError) -> Self {
        ApiError {
            recorded: true,
            ..e.classify()
        }
    }
}

impl From<crate::admin::AdminError> for ApiError {
    fn from(e: crate::admin::AdminError) -> Self {
        e.classify()
    }
}

impl From<crate::api::admin::auth::AuthError> for ApiError {
    fn from(e: crate::api::admin::auth::AuthError) -> Self {
        e.classify()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::CacheError;
    use crate::entra::EntraError;
    use crate::entra::assertion::AssertionError;
    use crate::entra::assertion::certificate::CertificateError;
    use crate::entra::assertion::managed_identity::ManagedIdentityError;
    use crate::exchange::ExchangeError;

    fn entra(e: EntraError) -> ApiError {
        ApiError::from(ExchangeError::Cache(CacheError::Entra(Arc::new(e))))
    }

    #[test]
    fn file_paths_and_upstream_bodies_stay_in_the_log() {
        let cases = [
            (
                entra(EntraError::Assertion(AssertionError::Certificate(
                    CertificateError::Read {
                        path: "/etc/wif/secret/app.pem".into(),
                        reason: "permission denied".into(),
                    },
                ))),
                "/etc/wif/secret/app.pem",
                ErrorCode::AssertionMisconfigured,
            ),
            (
                entra(EntraError::Assertion(AssertionError::ManagedIdentity(
                    ManagedIdentityError::Refused {
                        status: 401,
                        detail: "{\"error\":\"bad header sekrit-123\"}".into(),
                    },
                ))),
                "sekrit-123",
                ErrorCode::AssertionUnavailable,
            ),
            (
                entra(EntraError::Protocol(
                    "token response: <html>proxy 10.1.2.3</html>".into(),
                )),
                "10.1.2.3",
                ErrorCode::EntraBadResponse,
            ),
            (
                ExchangeError::Store(crate::store::StoreError::Unavailable(
                    "connection to db.internal:5432 refused".into(),
                ))
                .into(),
                "db.internal",
                ErrorCode::StoreUnavailable,
            ),
        ];
        for (error, secret, code) in cases {
            assert_eq!(error.code, code);
            assert!(!error.description.contains(secret), "{error:?}");
            assert!(
                error
                    .internal
                    .as_deref()
                    .is_some_and(|i| i.contains(secret)),
                "the log loses the detail: {error:?}"
            );
        }
    }

    #[test]
    fn the_managed_identity_status_and_the_certificate_mismatch_still_reach_the_caller() {
        let refused = entra(EntraError::Assertion(AssertionError::ManagedIdentity(
            ManagedIdentityError::Refused {
                status: 401,
                detail: "x".into(),
            },
        )));
        assert!(refused.description.contains("401"), "{refused:?}");
        assert_eq!(refused.retry_after, Some(5));
        let mismatch = entra(EntraError::Assertion(AssertionError::Certificate(
            CertificateError::Mismatch {
                certificate: "/c.pem".into(),
                key: "/k.pem".into(),
            },
        )));
        assert!(
            mismatch
                .description
                .contains("does not belong to the certificate")
        );
        assert!(!mismatch.description.contains("/k.pem"));
        assert_eq!(mismatch.status.as_u16(), 502);
    }
}
