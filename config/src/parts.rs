//! Reading a large configuration file one identity at a time.
//!
//! `toml` builds the whole document (every table and value, with its position) before
//! the configuration is made from it. For a file declaring a million federated
//! credentials that document is several times the size of the configuration, and the
//! allocator keeps its pages after it is freed (docs/PERFORMANCE.md, "Scale"). So a file
//! is read in parts when it can be: the text before the first line reading
//! `[[identities]]` (the fixed sections, `[[issuers]]`), then each run of lines from one
//! `[[identities]]` line to the next, each part a document of its own, parsed and
//! dropped before the next.
//!
//! This is only a faster way to the same configuration. Whenever the parts could mean
//! anything other than the whole file (a part that does not parse on its own, the first
//! part naming `identities`, a later part setting anything but `identities`), or a part
//! does not deserialize, [`read`] gives up and the caller reads the whole file, whose
//! answer (and error, with its line and column) is the one reported.
//!
//! Why the parts mean the same as the whole: a `[[identities]]` header always starts a
//! new element of the array, and the headers under it (`[[identities.federated_credentials]]`,
//! `[identities.rate_limit]`) refer to the last element, which is in the same part. A
//! line reading `[[identities]]` inside a multi-line string leaves the part where that
//! string starts unterminated, so that part does not parse and the whole file is read.

use serde::Deserialize;

use crate::BrokerConfig;
use crate::env::{self, Override};

/// A part after the first: identities, and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identities {
    identities: Vec<crate::IdentityConfig>,
}

/// The byte offsets of the lines reading exactly `[[identities]]` (spaces and tabs
/// around it allowed, nothing else on the line).
fn identity_headers(text: &str) -> Vec<usize> {
    const HEADER: &str = "[[identities]]";
    let blank = |s: &str| s.trim_matches([' ', '\t', '\r']).is_empty();
    text.match_indices(HEADER)
        .filter_map(|(at, _)| {
            let line = text.get(..at)?.rfind('\n').map_or(0, |n| n + 1);
            let rest = text.get(at + HEADER.len()..)?;
            let end = rest.find('\n').unwrap_or(rest.len());
            (blank(text.get(line..at)?) && blank(rest.get(..end)?)).then_some(line)
        })
        .collect()
}

/// The configuration in `text` with `overrides` applied, read part by part; `None` when
/// the file has no `[[identities]]` line or the parts could not stand for the whole (see
/// the module documentation): read the whole file then.
pub(crate) fn read(text: &str, overrides: &[Override]) -> Option<BrokerConfig> {
    let headers = identity_headers(text);
    let first = *headers.first()?;
    let head: toml::Table = toml::from_str(text.get(..first)?).ok()?;
    if head.contains_key("identities") {
        return None;
    }
    let mut config: BrokerConfig = if overrides.is_empty() {
        head.try_into().ok()?
    } else {
        env::apply(head, overrides).ok()?
    };
    let ends = headers.iter().skip(1).copied().chain([text.len()]);
    for (start, end) in headers.iter().copied().zip(ends) {
        let part: Identities = toml::from_str(text.get(start..end)?).ok()?;
        config.identities.extend(part.identities);
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[server]\nlisten = \"127.0.0.1:9000\"\n\n";

    fn identity(k: usize) -> String {
        format!(
            "[[identities]]\nname = \"id{k}\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\n\
             client_id = \"{k:08x}-0000-4000-8000-000000000000\"\n\n\
             [[identities.federated_credentials]]\nname = \"a\"\nissuer = \"https://issuer.example\"\n\
             subject = \"s{k}\"\n\n\
             [[identities.federated_credentials]]\nname = \"b\"\nissuer = \"https://issuer.example\"\n\
             claims_matching_expression = \"claims['sub'] matches 'x*'\"\n\n"
        )
    }

    /// Read in parts, and the same as the whole file read at once.
    fn same_as_whole(text: &str) -> BrokerConfig {
        let parts = read(text, &[]).unwrap();
        let whole: BrokerConfig = toml::from_str(text).unwrap();
        assert_eq!(parts, whole);
        parts
    }

    #[test]
    fn parts_give_the_whole_files_configuration() {
        let text = format!("{HEAD}{}{}{}", identity(0), identity(1), identity(2));
        let config = same_as_whole(&text);
        assert_eq!(config.identities.len(), 3);
        assert_eq!(config.identities[2].federated_credentials.len(), 2);
        assert_eq!(config.server.listen, "127.0.0.1:9000");
    }

    #[test]
    fn headers_with_spaces_and_crlf_lines_split_too() {
        let text = format!(
            "{HEAD}{}  [[identities]]  \n{}",
            identity(0),
            &identity(1)[15..]
        )
        .replace('\n', "\r\n");
        assert_eq!(identity_headers(&text).len(), 2);
        same_as_whole(&text);
    }

    #[test]
    fn a_file_without_identities_is_read_whole() {
        assert_eq!(read(HEAD, &[]), None);
    }

    #[test]
    fn sections_after_the_identities_make_the_whole_file_be_read() {
        let text = format!(
            "{}{}[store]\nurl = \"sqlite::memory:\"\n",
            HEAD,
            identity(0)
        );
        assert_eq!(read(&text, &[]), None);
        let whole: BrokerConfig = toml::from_str(&text).unwrap();
        assert_eq!(whole.store.url, "sqlite::memory:");
    }

    #[test]
    fn identities_named_before_the_first_header_make_the_whole_file_be_read() {
        // A statically defined array cannot be appended to: the whole file is an error.
        let text = format!("identities = []\n{}", identity(0));
        assert_eq!(read(&text, &[]), None);
        assert!(toml::from_str::<BrokerConfig>(&text).is_err());
        let text = format!("[[ identities ]]\nname = \"x\"\n{}", identity(0));
        assert_eq!(read(&text, &[]), None);
    }

    #[test]
    fn a_header_inside_a_multi_line_string_makes_the_whole_file_be_read() {
        let text = format!(
            "{HEAD}[[issuers]]\nurl = \"https://issuer.example\"\njwks_inline = '''\n{}'''\n{}",
            "[[identities]]\n",
            identity(0)
        );
        assert_eq!(identity_headers(&text).len(), 2);
        assert_eq!(read(&text, &[]), None);
    }

    #[test]
    fn a_mistake_in_a_part_makes_the_whole_file_be_read() {
        let text = format!(
            "{HEAD}{}{}",
            identity(0),
            identity(1).replace("subject", "subjet")
        );
        assert_eq!(read(&text, &[]), None);
    }

    #[test]
    fn overrides_apply_to_the_first_part() {
        let text = format!("{HEAD}{}", identity(0));
        let vars = [("WIF_SERVER_LISTEN".to_owned(), "127.0.0.1:9100".to_owned())];
        let overrides = env::overrides(&vars, BrokerConfig::SECTIONS).unwrap();
        let config = read(&text, &overrides).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:9100");
        assert_eq!(config.identities.len(), 1);
    }
}
