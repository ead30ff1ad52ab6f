//! Human output for the admin commands: aligned tables and `key: value` blocks.
//!
//! Everything printed here came from the server, so control characters are escaped: a
//! subject holding an escape sequence must not be able to repaint the admin's terminal.

use std::fmt::Write as _;

/// `--output`: how a command prints what the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The server's JSON, pretty-printed, for scripts and round trips.
    Json,
}

/// Columns separated by two spaces, each as wide as its widest cell; no trailing spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows
            .push(cells.into_iter().map(|c| clean(c.as_ref())).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let _ = write!(text, "{cell:<width$}", width = widths[i]);
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned; `None` values are left out.
pub fn fields(pairs: &[(&str, Option<String>)]) -> String {
    let width = pairs
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        if let Some(value) = value {
            let label = format!("{key}:");
            let _ = writeln!(out, "{label:<width$}  {}", clean(value));
        }
    }
    out
}

/// The text with control characters (newlines, escapes) shown escaped.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value pretty-printed, with a final newline.
pub fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// `1 identity`, `2 identities`: `n` with `singular` or `plural`, for every count the
/// CLI and the console print.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_do_not_end_in_spaces() {
        let mut table = Table::new(["NAME", "ISSUER", "SUBJECT"]);
        table.row([
            "main",
            "https://token.actions.githubusercontent.com",
            "repo:a/b",
        ]);
        table.row(["pull-requests", "https://gitlab.com", ""]);
        assert_eq!(
            table.render(),
            "\
NAME           ISSUER                                       SUBJECT
main           https://token.actions.githubusercontent.com  repo:a/b
pull-requests  https://gitlab.com
"
        );
    }

    #[test]
    fn an_empty_table_still_has_its_header() {
        let table = Table::new(["NAME", "TENANT"]);
        assert!(table.is_empty());
        assert_eq!(table.render(), "NAME  TENANT\n");
    }

    #[test]
    fn wide_characters_count_once() {
        let mut table = Table::new(["A", "B"]);
        table.row(["déploiement", "x"]);
        assert_eq!(table.render(), "A            B\ndéploiement  x\n");
    }

    #[test]
    fn control_characters_from_the_server_are_escaped() {
        let mut table = Table::new(["SUBJECT"]);
        table.row(["repo:x\u{1b}[2J\nmain"]);
        assert_eq!(table.render(), "SUBJECT\nrepo:x\\u{1b}[2J\\nmain\n");
    }

    #[test]
    fn fields_align_their_values_and_skip_absent_ones() {
        let text = fields(&[
            ("name", Some("deploy".into())),
            ("cloud", None),
            ("tenantId", Some("t".into())),
        ]);
        assert_eq!(text, "name:      deploy\ntenantId:  t\n");
    }
}
