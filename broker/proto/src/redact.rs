//! Values from untrusted input (an unverified token's header or claims, a request's path
//! or an issuer's documents) on their way into an error, an audit row or a log line.
//!
//! [`untrusted`] caps such a value at [`MAX_CHARS`] characters, escapes control
//! characters and marks a cut with `…`; [`Untrusted`] is a string that went through it,
//! and error variants that carry such a value hold an `Untrusted`, so no code path can put
//! a raw value there (docs/api.md, "Error responses").

use std::fmt;

/// Most characters of an untrusted value kept in an error, audit row or log line.
pub const MAX_CHARS: usize = 128;

/// Marks a value that was cut at [`MAX_CHARS`].
pub const CUT_MARKER: &str = "…";

/// `value` capped at [`MAX_CHARS`] characters (counted before escaping), control
/// characters escaped (`\n`, `\u{1b}`...), and [`CUT_MARKER`] appended when it was cut.
pub fn untrusted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_CHARS) + CUT_MARKER.len());
    let mut chars = value.chars();
    for c in chars.by_ref().take(MAX_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push_str(CUT_MARKER);
    }
    out
}

/// A value from untrusted input, capped and escaped by [`untrusted`]. The only way to make
/// one is from the raw value, so holding one proves the cap was applied.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Untrusted(String);

impl Untrusted {
    pub fn new(raw: &str) -> Self {
        Self(untrusted(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Untrusted {
    fn from(raw: &str) -> Self {
        Self::new(raw)
    }
}

impl From<&String> for Untrusted {
    fn from(raw: &String) -> Self {
        Self::new(raw)
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quoted, like `{:?}` of a string, but the content is the capped and escaped value.
impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_pass_unchanged() {
        assert_eq!(untrusted("RS256"), "RS256");
        assert_eq!(untrusted(""), "");
        let exact = "k".repeat(MAX_CHARS);
        assert_eq!(untrusted(&exact), exact);
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "k".repeat(11_500);
        let capped = untrusted(&long);
        assert_eq!(capped.chars().count(), MAX_CHARS + 1);
        assert!(capped.ends_with(CUT_MARKER));
        // Multi-byte characters are counted as characters, never split.
        let wide = "é".repeat(500);
        assert_eq!(untrusted(&wide).chars().count(), MAX_CHARS + 1);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(untrusted("a\nb\r\u{1b}[31m"), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(
            format!("{:?}", Untrusted::new("say \"hi\"\n")),
            "\"say \\\"hi\\\"\\n\""
        );
    }
}
