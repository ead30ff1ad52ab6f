//! The admin console: register and test federated credentials in a browser, at `/ui/`.
//!
//! Server-rendered HTML with a little plain JavaScript, embedded in the binary: no build
//! step, no external URL, nothing fetched at run time. It is a front end to the same
//! operations as the admin API, never a second implementation of them: sign-in uses
//! [`crate::api::admin::auth`], writes go through [`crate::admin::Admin`] (Entra's rules,
//! one audit event per write naming the admin), "Test it" runs [`crate::simulate`], and
//! the activity page reads the audit trail from the store.
//!
//! Pages, one module each: [`session`] (sign-in, sessions, CSRF), [`identities`] (list,
//! detail, create, edit, delete), [`credentials`] (the "Add credential" wizard whose
//! subject builders are in [`wizard`], edit and delete), [`simulate`] ("Test it"),
//! [`activity`] (audit events and the exchange chart). [`html`] escapes every value.
//!
//! Every response carries a Content-Security-Policy that allows scripts, styles and
//! requests from the broker itself only, with no inline script or style, and forbids
//! framing.

pub mod activity;
pub mod credentials;
pub mod html;
pub mod identities;
pub mod session;
pub mod simulate;
pub mod wizard;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::AppState;
use session::Sessions;

/// What console handlers share: the broker's state and this replica's sessions.
#[derive(Clone)]
pub struct Console {
    pub app: AppState,
    pub sessions: Arc<Sessions>,
}

impl axum::extract::FromRef<Console> for crate::api::body::BodyLimit {
    fn from_ref(console: &Console) -> Self {
        crate::api::body::BodyLimit(console.app.max_body_bytes)
    }
}

/// The Content-Security-Policy of every console response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const ICON: &str = include_str!("assets/favicon.svg");

/// The console's routes, all under `/ui`, ready to merge into the broker's router.
pub fn router(state: AppState) -> Router<AppState> {
    let console = Console {
        sessions: Arc::new(Sessions::new(state.broker.clock().clone())),
        app: state,
    };
    Router::new()
        .route("/ui", get(|| async { html::redirect("/ui/") }))
        .route("/ui/", get(|| async { html::redirect("/ui/identities") }))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
        .route("/ui/assets/favicon.svg", get(icon))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route(
            "/ui/identities",
            get(identities::list).post(identities::create),
        )
        .route("/ui/identities/+new", get(identities::new_form))
        .route(
            "/ui/identities/{name}",
            get(identities::detail).post(identities::update),
        )
        .route("/ui/identities/{name}/edit", get(identities::edit_form))
        .route(
            "/ui/identities/{name}/delete",
            get(identities::delete_form).post(identities::delete),
        )
        .route(
            "/ui/identities/{name}/credentials",
            post(credentials::create),
        )
        .route(
            "/ui/identities/{name}/credentials/new",
            get(credentials::wizard_form),
        )
        .route(
            "/ui/identities/{name}/credentials/{credential}",
            post(credentials::update),
        )
        .route(
            "/ui/identities/{name}/credentials/{credential}/edit",
            get(credentials::edit_form),
        )
        .route(
            "/ui/identities/{name}/credentials/{credential}/delete",
            get(credentials::delete_form).post(credentials::delete),
        )
        .route("/ui/api/draft", post(credentials::draft_endpoint))
        .route("/ui/test", get(simulate::form).post(simulate::run))
        .route("/ui/activity", get(activity::page))
        // The broker's router has the one fallback (JSON); console paths get a page.
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

async fn not_found(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = session::current(&console, &headers);
    html::error_page(
        StatusCode::NOT_FOUND,
        session.as_deref(),
        "Not found",
        "There is no such page in the console.",
    )
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Headers every console response carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_name_no_external_url() {
        for (name, text) in [("console.css", CSS), ("console.js", JS)] {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(needle), "{name} contains {needle}");
            }
        }
    }

    #[test]
    fn the_policy_allows_only_the_broker_itself() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    }
}
