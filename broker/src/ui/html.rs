//! HTML output: escaping and the page shell.
//!
//! Every value that did not come from this module's own string literals goes through
//! [`esc`] before it reaches a page: identity and credential fields, audit reasons,
//! subjects, query parameters echoed back. Attribute values are always double-quoted, and
//! [`esc`] escapes both quote characters, so the same helper is safe in text and in
//! attributes. Pages carry no inline script or style (the Content-Security-Policy forbids
//! both); behaviour lives in `/ui/assets/console.js`.

use std::fmt::{self, Write as _};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Session;

/// Text made safe for HTML element content and double- or single-quoted attributes.
pub struct Escaped<'a>(&'a str);

/// Escapes `text` when formatted: `&`, `<`, `>`, `"` and `'` become entities.
pub fn esc(text: &str) -> Escaped<'_> {
    Escaped(text)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// `text` escaped into a new string.
pub fn escape(text: &str) -> String {
    esc(text).to_string()
}

/// A query-string component, percent-encoded (for links built from values).
pub fn url_component(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A path segment, percent-encoded (identity and credential names are restricted to
/// letters, digits, `-` and `_`, but ids and foreign values are not).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which navigation entry is highlighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Identities,
    Test,
    Activity,
    None,
}

/// A full page: the shell (navigation, who is signed in, sign-out form) around `body`,
/// which must already be escaped markup.
pub fn page(title: &str, session: Option<&Session>, nav: Nav, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · WIF Broker</title>\
         <link rel=\"icon\" href=\"/ui/assets/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/ui/assets/console.css\">\
         <script src=\"/ui/assets/console.js\" defer></script></head><body>",
        esc(title)
    );
    out.push_str("<header class=\"top\"><a class=\"brand\" href=\"/ui/identities\">WIF Broker</a>");
    if let Some(session) = session {
        out.push_str("<nav>");
        for (entry, href, label) in [
            (Nav::Identities, "/ui/identities", "Identities"),
            (Nav::Test, "/ui/test", "Test it"),
            (Nav::Activity, "/ui/activity", "Activity"),
        ] {
            let current = if entry == nav {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{href}\"{current}>{label}</a>");
        }
        let _ = write!(
            out,
            "</nav><div class=\"who\"><span data-testid=\"who\">{} <span class=\"role role-{}\">{}</span></span>\
             <form method=\"post\" action=\"/ui/logout\">{}<button type=\"submit\" class=\"link\">Sign out</button></form></div>",
            esc(&session.principal.name),
            session.principal.role.as_str(),
            session.principal.role.as_str(),
            csrf_field(session)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// The hidden form field every state-changing form carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// `disabled` for a reader's save buttons (the server refuses their POSTs as well).
pub fn disabled_unless_admin(session: &Session) -> &'static str {
    if session.can_write() {
        ""
    } else {
        " disabled title=\"The reader role cannot change anything\""
    }
}

/// An HTML response with the given status.
pub fn html(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A page that says what went wrong; the request id lets an operator find the log line.
pub fn error_page(
    status: StatusCode,
    session: Option<&Session>,
    title: &str,
    message: &str,
) -> Response {
    let body = format!(
        "<section class=\"error-page\"><h1>{}</h1><p class=\"error\" data-testid=\"error\">{}</p>\
         <p class=\"muted\">Status {} · request id <code>{}</code></p>\
         <p><a href=\"/ui/identities\">Back to the console</a></p></section>",
        esc(title),
        esc(message),
        status.as_u16(),
        esc(&crate::api::error::current_request_id())
    );
    html(status, page(title, session, Nav::None, &body))
}

/// 303 See Other to `location` (a path of this console).
pub fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// What a redirect after a write tells the next page (`?notice=KIND&credential=NAME`).
/// Only these fixed messages are shown, so a link cannot put arbitrary text on a page.
pub fn notice(kind: Option<&str>, credential: Option<&str>) -> String {
    let credential = credential
        .filter(|c| crate::policy::rules::check_name(c).is_none())
        .unwrap_or("the credential");
    let text = match kind {
        Some("identity-created") => "Identity created.".to_owned(),
        Some("identity-updated") => "Identity saved.".to_owned(),
        Some("identity-deleted") => "Identity deleted, with its federated credentials.".to_owned(),
        Some("credential-created") => format!(
            "Credential {credential} added: the broker admits matching tokens from its next exchange on. With the passthrough assertion Entra must also hold a matching federated credential, and Entra takes minutes to propagate a new one."
        ),
        Some("credential-updated") => format!("Credential {credential} saved."),
        Some("credential-deleted") => format!("Credential {credential} deleted."),
        _ => return String::new(),
    };
    format!(
        "<p class=\"notice\" role=\"status\" data-testid=\"notice\">{}</p>",
        esc(&text)
    )
}

/// An admin operation's refusal: the description and, for broken rules, one line each.
pub fn error_box(error: &crate::api::ApiError) -> String {
    let mut out = format!(
        "<div class=\"error\" role=\"alert\" data-testid=\"error\"><p>{}</p>",
        esc(&error.description)
    );
    if let Some(serde_json::Value::Array(details)) = &error.details {
        out.push_str("<ul>");
        for d in details {
            let field = d.get("field").and_then(|v| v.as_str()).unwrap_or_default();
            let message = d
                .get("message")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let _ = write!(out, "<li><b>{}</b>: {}</li>", esc(field), esc(message));
        }
        out.push_str("</ul>");
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_become_entities() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn plain_and_unicode_text_is_unchanged() {
        assert_eq!(escape(""), "");
        assert_eq!(
            escape("repo:contoso/app:ref:refs/heads/main"),
            "repo:contoso/app:ref:refs/heads/main"
        );
        assert_eq!(escape("naïve — 日本 <"), "naïve — 日本 &lt;");
    }

    #[test]
    fn escaping_an_attribute_cannot_close_it() {
        let value = "x\" onmouseover=\"alert(1)";
        let attr = format!("<input value=\"{}\">", esc(value));
        assert_eq!(attr.matches('"').count(), 2, "{attr}");
        let single = format!("<input value='{}'>", esc("a' b='c"));
        assert_eq!(single.matches('\'').count(), 2, "{single}");
    }

    #[test]
    fn entities_are_escaped_again_not_trusted() {
        assert_eq!(escape("&lt;"), "&amp;lt;");
    }

    #[test]
    fn path_segments_and_query_components_are_percent_encoded() {
        assert_eq!(path_segment("deploy-1_a"), "deploy-1_a");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(path_segment("config:x"), "config%3Ax");
        assert_eq!(url_component("a b&c=d"), "a+b%26c%3Dd");
    }

    #[test]
    fn redirects_are_see_other() {
        let response = redirect("/ui/login");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/ui/login");
    }
}
