//! Sign-in, sessions and CSRF protection for the console.
//!
//! An admin signs in by pasting the same bearer token the admin API accepts; it is checked
//! by [`crate::api::admin::auth::AdminAuth`] (static hashed tokens or OIDC admin tokens)
//! and then forgotten. The broker keeps a server-side session: a random 256-bit id, of
//! which the cookie carries the id and the server keeps only its SHA-256, with the
//! principal's name and role and a per-session CSRF token. Sessions end after
//! [`IDLE_SECS`] without a request, after [`MAX_SECS`] in any case, when an OIDC admin
//! token they were opened with expires, and at sign-out. Sessions live in this replica's
//! memory: behind a load balancer, use sticky sessions or sign in again on another
//! replica.
//!
//! The cookie is `HttpOnly; SameSite=Strict; Path=/ui`, plus `Secure` when the listener
//! serves TLS. Every form that changes anything (and the sign-in and sign-out forms)
//! carries a CSRF token that is compared in constant time; a POST without it is refused
//! with 403 before anything else happens. The sign-in form, which has no session yet,
//! gets a random sign-in id in a cookie (`__Host-wif_ui_login` over TLS) whose CSRF token
//! the server keeps: a planted cookie with a made-up token is refused.

use crate::error::ErrorCode;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::api::body::Capped;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::Console;
use super::html::{self, esc};
use crate::admin::Actor;
use crate::api::ApiError;
use crate::api::admin::auth::{Principal, Role};
use crate::clock::SharedClock;

/// A session ends after this long without a request.
pub const IDLE_SECS: u64 = 30 * 60;
/// A session ends this long after sign-in whatever happens.
pub const MAX_SECS: u64 = 8 * 60 * 60;
/// The most sessions kept at once; when full, the least recently used one ends (LRU, so a
/// new sign-in is always admitted).
const MAX_SESSIONS: u64 = 10_000;
/// The most sessions one principal holds at once; opening another ends its oldest.
pub const MAX_SESSIONS_PER_PRINCIPAL: usize = 20;
/// The session cookie.
pub const SESSION_COOKIE: &str = "wif_ui_session";
/// The sign-in form's cookie over plain HTTP: it carries a random sign-in id whose CSRF
/// token only the server knows (see [`Sessions::begin_login`]).
pub const LOGIN_COOKIE: &str = "wif_ui_login";
/// The same over TLS, with the `__Host-` prefix: the browser accepts it only from this
/// origin over HTTPS, with `Path=/` and no `Domain`, so no sibling host can plant one.
pub const LOGIN_COOKIE_TLS: &str = "__Host-wif_ui_login";
/// How long a sign-in form stays usable.
const LOGIN_SECS: u64 = 3600;
/// The most sign-in forms outstanding at once (least recently used dropped first).
const MAX_LOGINS: u64 = 50_000;
/// The form field, and for JSON calls the header, that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One signed-in admin or reader.
#[derive(Debug)]
pub struct Session {
    pub principal: Principal,
    /// Sent in every form; compared in constant time on every POST.
    pub csrf: String,
    /// Clock seconds after which the session is over.
    pub expires_at: u64,
}

impl Session {
    pub fn can_write(&self) -> bool {
        self.principal.role >= Role::Admin
    }

    /// The signed-in admin as the admin layer names them, for this request.
    pub fn actor(&self) -> Actor {
        Actor::new(self.principal.name.clone(), self.principal.role.as_str())
    }
}

/// The sessions of this replica.
pub struct Sessions {
    by_hash: moka::sync::Cache<[u8; 32], Arc<Session>>,
    /// Outstanding sign-in forms: SHA-256 of the sign-in id in the cookie → the CSRF token
    /// the form carries. A cookie the server did not issue names no form.
    logins: moka::sync::Cache<[u8; 32], String>,
    /// Each principal's session hashes, oldest first (some may have ended already).
    by_principal: Mutex<HashMap<String, VecDeque<[u8; 32]>>>,
    clock: SharedClock,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.by_hash.entry_count())
            .finish()
    }
}

/// The random source failed (the operating system could not provide randomness).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no randomness available for a session id")]
pub struct NoRandomness;

fn digest(id: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            by_hash: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(Duration::from_secs(IDLE_SECS))
                .time_to_live(Duration::from_secs(MAX_SECS))
                .build(),
            logins: moka::sync::Cache::builder()
                .max_capacity(MAX_LOGINS)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(Duration::from_secs(LOGIN_SECS))
                .build(),
            by_principal: Mutex::new(HashMap::new()),
            clock,
            rng: SystemRandom::new(),
        }
    }

    /// A new sign-in form: the id for its cookie and the CSRF token for the form, bound
    /// together here on the server.
    pub fn begin_login(&self) -> Result<(String, String), NoRandomness> {
        let id = self.random_token()?;
        let csrf = self.random_token()?;
        self.logins.insert(digest(&id), csrf.clone());
        Ok((id, csrf))
    }

    /// Whether `presented` is the CSRF token of the sign-in form `id` was issued with.
    pub fn login_matches(&self, id: Option<&str>, presented: Option<&str>) -> bool {
        let Some(expected) = id.and_then(|id| self.logins.get(&digest(id))) else {
            return false;
        };
        tokens_equal(&expected, presented)
    }

    /// The CSRF token of sign-in form `id`, if it is outstanding.
    pub fn login_csrf(&self, id: &str) -> Option<String> {
        self.logins.get(&digest(id))
    }

    /// Ends sign-in form `id` (after a successful sign-in: it cannot be used again).
    pub fn end_login(&self, id: &str) {
        self.logins.invalidate(&digest(id));
    }

    /// 256 random bits as 64 hex digits.
    pub fn random_token(&self) -> Result<String, NoRandomness> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| NoRandomness)?;
        Ok(hex::encode(bytes))
    }

    /// Opens a session; returns the id for the cookie. `not_after` caps its life (the
    /// expiry of the OIDC token it was opened with). `replacing` is the session id the
    /// browser already held, which ends; and when the principal already holds
    /// [`MAX_SESSIONS_PER_PRINCIPAL`] sessions, its oldest ends.
    pub fn open(
        &self,
        replacing: Option<&str>,
        principal: Principal,
        not_after: Option<u64>,
    ) -> Result<(String, Arc<Session>), NoRandomness> {
        if let Some(previous) = replacing {
            self.close(previous);
        }
        let id = self.random_token()?;
        let now = self.clock.now();
        let mut expires_at = now.saturating_add(MAX_SECS);
        if let Some(limit) = not_after {
            expires_at = expires_at.min(limit);
        }
        let session = Arc::new(Session {
            principal,
            csrf: self.random_token()?,
            expires_at,
        });
        let key = digest(&id);
        {
            let mut by_principal = self
                .by_principal
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let held = by_principal
                .entry(session.principal.name.clone())
                .or_default();
            held.retain(|k| self.by_hash.contains_key(k));
            while held.len() >= MAX_SESSIONS_PER_PRINCIPAL {
                if let Some(oldest) = held.pop_front() {
                    self.by_hash.invalidate(&oldest);
                }
            }
            held.push_back(key);
        }
        self.by_hash.insert(key, session.clone());
        Ok((id, session))
    }

    /// The live session with this id, if any.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let key = digest(id);
        let session = self.by_hash.get(&key)?;
        if self.clock.now() >= session.expires_at {
            self.by_hash.invalidate(&key);
            return None;
        }
        Some(session)
    }

    pub fn close(&self, id: &str) {
        let key = digest(id);
        let Some(session) = self.by_hash.remove(&key) else {
            return;
        };
        let mut by_principal = self
            .by_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = by_principal.get_mut(&session.principal.name) {
            held.retain(|k| *k != key);
            if held.is_empty() {
                by_principal.remove(&session.principal.name);
            }
        }
    }
}

/// Constant-time comparison of a presented token with the expected one.
pub fn tokens_equal(expected: &str, presented: Option<&str>) -> bool {
    match presented {
        Some(p) if !expected.is_empty() => bool::from(expected.as_bytes().ct_eq(p.as_bytes())),
        _ => false,
    }
}

/// The value of cookie `name` in the request, if present.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with the console's attributes.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The sign-in cookie's name and `Set-Cookie` value: `__Host-` over TLS (which requires
/// `Secure` and `Path=/`), the console's attributes otherwise.
fn login_cookie(value: &str, max_age: u64, tls: bool) -> String {
    if tls {
        format!(
            "{LOGIN_COOKIE_TLS}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}; Secure"
        )
    } else {
        set_cookie(LOGIN_COOKIE, value, max_age, false)
    }
}

fn login_cookie_name(tls: bool) -> &'static str {
    if tls { LOGIN_COOKIE_TLS } else { LOGIN_COOKIE }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The live session of this request, if any.
pub fn current(console: &Console, headers: &HeaderMap) -> Option<Arc<Session>> {
    cookie(headers, SESSION_COOKIE).and_then(|id| console.sessions.get(id))
}

/// A request from a signed-in admin or reader. Without a live session, pages redirect to
/// the sign-in page and the JSON helpers answer 401.
#[derive(Debug, Clone)]
pub struct Signed(pub Arc<Session>);

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        if let Some(session) =
            cookie(&parts.headers, SESSION_COOKIE).and_then(|id| console.sessions.get(id))
        {
            return Ok(Signed(session));
        }
        let path = parts.uri.path();
        if path.starts_with("/ui/api/") {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the console session is missing or has expired; sign in again",
            )
            .into_response());
        }
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|_| parts.method == axum::http::Method::GET)
            .unwrap_or("/ui/identities");
        Err(html::redirect(&format!(
            "/ui/login?next={}",
            html::url_component(next)
        )))
    }
}

/// A `application/x-www-form-urlencoded` body, read against the size limit.
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Self {
        Form(
            url::form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Form(pairs)
    }

    /// Sets `name` unless the form already has a value for it.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() {
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    /// The first value of `name`, as sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` with surrounding whitespace removed, or "".
    pub fn trimmed(&self, name: &str) -> &str {
        self.get(name).map(str::trim).unwrap_or_default()
    }

    /// The trimmed value, or None when empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        Some(self.trimmed(name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    pub fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), Some("on" | "true" | "1" | "yes"))
    }
}

async fn read_form(
    console: &Console,
    session: Option<&Session>,
    body: Result<Capped, ApiError>,
) -> Result<Form, Response> {
    let limit = console.app.max_body_bytes;
    match body {
        Ok(body) => Ok(Form::parse(&body.bytes)),
        Err(_) => Err(html::error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            session,
            "Form too large",
            &format!("The form is larger than {limit} bytes."),
        )),
    }
}

/// A 403 page unless the form carries this session's CSRF token.
/// A posted form, read within the body limit and with its CSRF token checked: what every
/// console POST starts with.
pub async fn checked_form(
    console: &Console,
    session: &Session,
    body: Result<Capped, ApiError>,
) -> Result<Form, Response> {
    let form = read_form(console, Some(session), body).await?;
    match csrf_refusal(session, &form) {
        Some(refused) => Err(refused),
        None => Ok(form),
    }
}

fn csrf_refusal(session: &Session, form: &Form) -> Option<Response> {
    if tokens_equal(&session.csrf, form.get(CSRF_FIELD)) {
        return None;
    }
    Some(csrf_refused(Some(session)))
}

pub fn csrf_refused(session: Option<&Session>) -> Response {
    html::error_page(
        StatusCode::FORBIDDEN,
        session,
        "Request refused",
        "This form did not carry the console's security token (CSRF protection), so nothing was changed. Reload the page and try again.",
    )
}

/// A 403 page for a reader trying to change something; the attempt is audited like a
/// refused admin API write.
pub fn reader_refusal(
    console: &Console,
    session: &Session,
    action: &'static str,
    identity: Option<&str>,
    credential: Option<&str>,
) -> Option<Response> {
    if session.can_write() {
        return None;
    }
    let error = ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "{} has the {} role; this needs admin",
            session.principal.name,
            session.principal.role.as_str()
        ),
    );
    console.app.admin.record(
        action,
        Some(&session.actor()),
        identity,
        credential,
        Err(&error),
    );
    Some(html::error_page(
        StatusCode::FORBIDDEN,
        Some(session),
        "Not allowed",
        &format!(
            "You are signed in as {} with the reader role: you can look at everything but change nothing.",
            session.principal.name
        ),
    ))
}

// ----- pages ----------------------------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after signing in: only paths of this console (no open redirect).
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.starts_with("/ui/login")
                && !n.contains("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/ui/identities",
    }
}

fn login_page(status: StatusCode, csrf: &str, next: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" data-testid=\"error\">{}</p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<section class=\"login\"><h1>Sign in</h1>\
         <p>Paste an admin or reader token: the same bearer token the admin API and the \
         <code>wif-broker</code> CLI accept (a static token from <code>[admin] tokens_file</code> \
         or an OIDC admin token). The broker checks it once and keeps only a session; the token \
         is not stored.</p>\
         <p class=\"hint\" data-testid=\"dev-hint\">Trying <code>wif-broker dev</code>? It prints a token \
         for this run in its terminal, on the <code>admin console</code> line (and in the \
         <code>export ... WIF_ADMIN_TOKEN=</code> line).</p>{error}\
         <form method=\"post\" action=\"/ui/login\" autocomplete=\"off\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"token\">Token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" required autofocus spellcheck=\"false\">\
         <button type=\"submit\" class=\"primary\">Sign in</button></form></section>",
        esc(csrf),
        esc(next)
    );
    html::html(status, html::page("Sign in", None, html::Nav::None, &body))
}

/// `GET /ui/login`
pub async fn login_form(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref()).to_owned();
    if cookie(&headers, SESSION_COOKIE)
        .and_then(|id| console.sessions.get(id))
        .is_some()
    {
        return html::redirect(&next);
    }
    let Ok((id, csrf)) = console.sessions.begin_login() else {
        return no_randomness();
    };
    let response = login_page(StatusCode::OK, &csrf, &next, None);
    with_cookie(response, &login_cookie(&id, LOGIN_SECS, console.app.tls))
}

fn no_randomness() -> Response {
    html::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "Cannot sign in",
        "The broker could not get randomness for a session; try again.",
    )
}

/// `POST /ui/login`
pub async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Result<Capped, ApiError>,
) -> Response {
    let form = match read_form(&console, None, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = safe_next(form.get("next")).to_owned();
    // The form's token must be the one the server bound to this browser's sign-in id: a
    // cookie and token pair made up by someone else (a planted cookie) names no form.
    // A browser saying the form was posted from another site is refused too.
    let login_id = cookie(&headers, login_cookie_name(console.app.tls));
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site")
        });
    if cross_site
        || !console
            .sessions
            .login_matches(login_id, form.get(CSRF_FIELD))
    {
        return csrf_refused(None);
    }
    let login_id = login_id.unwrap_or_default();
    let expected = console.sessions.login_csrf(login_id).unwrap_or_default();
    let token = form.trimmed("token");
    let token = (!token.is_empty()).then_some(token);
    let app = &console.app;
    match app.auth.authenticate(token, &app.broker).await {
        Ok(principal) => {
            // The verified `exp` of an OIDC admin token (a fractional one included).
            let not_after = principal.expires_at;
            // Signing in ends the session this browser held before, if any.
            let previous = cookie(&headers, SESSION_COOKIE);
            let (id, _) = match console
                .sessions
                .open(previous, principal.clone(), not_after)
            {
                Ok(opened) => opened,
                Err(_) => return no_randomness(),
            };
            app.admin.record(
                "console.sign_in",
                Some(&Actor::new(principal.name.clone(), principal.role.as_str())),
                None,
                None,
                Ok(()),
            );
            let response = html::redirect(&next);
            let response = with_cookie(
                response,
                &set_cookie(SESSION_COOKIE, &id, MAX_SECS, app.tls),
            );
            console.sessions.end_login(login_id);
            with_cookie(response, &login_cookie("", 0, app.tls))
        }
        Err(e) => {
            let error = ApiError::from(e);
            app.admin
                .record("console.sign_in", None, None, None, Err(&error));
            let message = format!("That token was not accepted: {}", error.description);
            login_page(error.status, &expected, &next, Some(&message))
        }
    }
}

/// `POST /ui/logout`
pub async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
    Signed(session): Signed,
    body: Result<Capped, ApiError>,
) -> Response {
    if let Err(r) = checked_form(&console, &session, body).await {
        return r;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        console.sessions.close(id);
    }
    console.app.admin.record(
        "console.sign_out",
        Some(&session.actor()),
        None,
        None,
        Ok(()),
    );
    with_cookie(
        html::redirect("/ui/login"),
        &set_cookie(SESSION_COOKIE, "", 0, console.app.tls),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::OffsetClock;

    fn alice() -> Principal {
        Principal {
            name: "alice".into(),
            role: Role::Admin,
            expires_at: None,
        }
    }

    #[test]
    fn a_session_is_found_by_its_id_and_not_by_anything_else() {
        let sessions = Sessions::new(OffsetClock::new());
        let (id, session) = sessions.open(None, alice(), None).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(id, session.csrf);
        assert_eq!(sessions.get(&id).unwrap().principal.name, "alice");
        assert!(sessions.get(&session.csrf).is_none());
        assert!(sessions.get("").is_none());
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn sessions_end_at_the_absolute_limit_and_at_the_admin_tokens_expiry() {
        let clock = OffsetClock::new();
        let sessions = Sessions::new(clock.clone());
        let (id, _) = sessions.open(None, alice(), None).unwrap();
        let now = crate::clock::Clock::now(clock.as_ref());
        let (short, _) = sessions.open(None, alice(), Some(now + 60)).unwrap();
        clock.advance(61);
        assert!(sessions.get(&id).is_some());
        assert!(sessions.get(&short).is_none(), "past the OIDC token's exp");
        clock.advance(MAX_SECS as i64);
        assert!(sessions.get(&id).is_none(), "past the absolute limit");
    }

    #[test]
    fn signing_in_again_ends_the_previous_session() {
        let sessions = Sessions::new(OffsetClock::new());
        let (first, _) = sessions.open(None, alice(), None).unwrap();
        let (second, _) = sessions.open(Some(&first), alice(), None).unwrap();
        assert!(sessions.get(&first).is_none());
        assert!(sessions.get(&second).is_some());
    }

    #[test]
    fn a_principal_holds_at_most_its_cap_of_sessions_and_others_keep_theirs() {
        let sessions = Sessions::new(OffsetClock::new());
        let bob = Principal {
            name: "bob".into(),
            role: Role::Reader,
            expires_at: None,
        };
        let (admin, _) = sessions.open(None, alice(), None).unwrap();
        let ids: Vec<String> = (0..MAX_SESSIONS_PER_PRINCIPAL + 5)
            .map(|_| sessions.open(None, bob.clone(), None).unwrap().0)
            .collect();
        let live = ids.iter().filter(|id| sessions.get(id).is_some()).count();
        assert_eq!(live, MAX_SESSIONS_PER_PRINCIPAL);
        assert!(sessions.get(&ids[0]).is_none(), "the oldest ended");
        assert!(sessions.get(&ids[ids.len() - 1]).is_some());
        assert!(
            sessions.get(&admin).is_some(),
            "another principal is untouched"
        );
        // Sign-out frees a place without ending another session.
        sessions.close(&ids[ids.len() - 1]);
        let (extra, _) = sessions.open(None, bob.clone(), None).unwrap();
        assert!(sessions.get(&extra).is_some());
        assert!(sessions.get(&ids[ids.len() - 2]).is_some());
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        assert!(tokens_equal("abc", Some("abc")));
        assert!(!tokens_equal("abc", Some("abd")));
        assert!(!tokens_equal("abc", Some("ab")));
        assert!(!tokens_equal("abc", None));
        assert!(
            !tokens_equal("", Some("")),
            "an empty expected token never matches"
        );
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; wif_ui_login=xyz"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("wif_ui_session=s1"),
        );
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("s1"));
        assert_eq!(cookie(&headers, "wif_ui"), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain = set_cookie(SESSION_COOKIE, "id", 60, false);
        assert_eq!(
            plain,
            "wif_ui_session=id; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        assert!(set_cookie(SESSION_COOKIE, "id", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/ui/activity?outcome=denied")),
            "/ui/activity?outcome=denied"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil",
            "/v1/identities",
            "/ui/login?next=x",
            "/ui/a b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/identities", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/identities");
    }

    #[test]
    fn forms_are_decoded() {
        let form = Form::parse(b"name=a+b&csrf=%2Fx&flag=on&empty=&name=second");
        assert_eq!(form.get("name"), Some("a b"));
        assert_eq!(form.get("csrf"), Some("/x"));
        assert!(form.checked("flag"));
        assert!(!form.checked("empty"));
        assert_eq!(form.optional("empty"), None);
        assert_eq!(form.trimmed("missing"), "");
    }
}
