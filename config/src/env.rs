//! `WIF_`-prefixed environment overrides.
//!
//! `WIF_<SECTION>_<KEY>=value` sets `key` in `[section]`, for the fixed sections only:
//! `WIF_SERVER_LISTEN=0.0.0.0:8080`, `WIF_ENTRA_MAX_RETRIES=5`. The value is read as a
//! TOML value when it parses as one (numbers, booleans, arrays such as `["RS256"]`) and
//! as a plain string otherwise. Variables whose section is not one of this binary's are
//! left alone (the agent and broker share the prefix); an unknown key inside a known
//! section is an error naming the variable.

/// The prefix shared by every override.
pub const PREFIX: &str = "WIF_";

/// Variables with the prefix that are not key overrides.
const RESERVED: &[&str] = &["WIF_CONFIG", "WIF_SERVER_URL", "WIF_ADMIN_TOKEN"];

/// Applies overrides from `vars` to `table`. Returns a message naming the variable on error.
pub fn overlay(
    table: &mut toml::Table,
    vars: &[(String, String)],
    sections: &[&str],
) -> Result<(), String> {
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort();
    for (name, raw) in sorted {
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = sections.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k.to_owned()))
        }) else {
            continue;
        };
        if key.is_empty() {
            return Err(format!("environment variable {name} names no key"));
        }
        let value = parse_value(raw);
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(format!(
                "environment variable {name}: `{section}` in the file is not a table"
            ));
        };
        section_table.insert(key, value);
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn strings_numbers_booleans_and_arrays_are_typed() {
        let mut t = toml::Table::new();
        overlay(
            &mut t,
            &vars(&[
                ("WIF_SERVER_LISTEN", "0.0.0.0:9000"),
                ("WIF_SERVER_MAX_BODY_BYTES", "1024"),
                ("WIF_OUTBOUND_ALLOW_LOOPBACK_HTTP", "true"),
                ("WIF_TOKENS_ALGORITHMS", "[\"RS256\"]"),
                ("PATH", "/bin"),
                ("WIF_AGENT_LISTEN", "ignored"),
            ]),
            &["server", "outbound", "tokens"],
        )
        .unwrap();
        assert_eq!(t["server"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(t["server"]["max_body_bytes"].as_integer(), Some(1024));
        assert_eq!(t["outbound"]["allow_loopback_http"].as_bool(), Some(true));
        assert_eq!(t["tokens"]["algorithms"].as_array().map(|a| a.len()), Some(1));
        assert!(!t.contains_key("agent"));
    }
}
