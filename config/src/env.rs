//! `WIF_`-prefixed environment overrides.
//!
//! `WIF_<SECTION>_<KEY>=value` sets `key` in `[section]`, for the fixed sections only:
//! `WIF_SERVER_LISTEN=0.0.0.0:8080`, `WIF_ENTRA_MAX_RETRIES=5`. The name after the prefix
//! is matched case-insensitively. The value is read as a TOML value when it parses as one
//! (numbers, booleans, arrays such as `["RS256"]`, quoted strings) and as a plain string
//! otherwise; a value that parses but has the wrong type for its key is retried as a
//! plain string. Variables whose section is not one of this binary's are left alone (the
//! agent and broker share the prefix), as are the few that are not key overrides
//! (`WIF_CONFIG`, `WIF_SERVER_URL`, `WIF_ADMIN_TOKEN`). An unknown key inside a known
//! section, or a value of the wrong type, is an error naming the variable.
//!
//! The arrays of tables (`[[issuers]]`, `[[identities]]`) cannot be set this way.
//!
//! Kubernetes gives every container service-link variables for each Service in its
//! namespace (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_443_TCP`, ...); for a Service named
//! `wif-server` or `wif-agent` they share the prefix. Their shapes are not keys of any
//! section, so they are ignored rather than refused.

/// The prefix shared by every override.
pub const PREFIX: &str = "WIF_";

/// Variables with the prefix that are not key overrides.
const RESERVED: &[&str] = &["WIF_CONFIG", "WIF_SERVER_URL", "WIF_ADMIN_TOKEN"];

/// Whether `key` (after `WIF_<SECTION>_`, lower-cased) is the tail of a Kubernetes
/// service-link variable rather than a key override.
/// `value` tells `<SVC>_PORT=tcp://10.0.0.1:443` from a key named `port`.
pub fn is_service_link(key: &str, value: &str) -> bool {
    let port_detail = key.strip_prefix("port_").is_some_and(|rest| {
        let mut parts = rest.split('_');
        let number = parts.next().is_some_and(|n| n.parse::<u16>().is_ok());
        let protocol = parts
            .next()
            .is_some_and(|p| matches!(p, "tcp" | "udp" | "sctp"));
        let tail = parts.next();
        number
            && protocol
            && matches!(tail, None | Some("proto" | "port" | "addr"))
            && parts.next().is_none()
    });
    key == "service_host"
        || key == "service_port"
        || key.starts_with("service_port_")
        || (key == "port"
            && ["tcp://", "udp://", "sctp://"]
                .iter()
                .any(|p| value.starts_with(p)))
        || port_detail
}

/// One `WIF_<SECTION>_<KEY>` variable, resolved to the key it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable's name as given, e.g. `WIF_SERVER_LISTEN`.
    pub variable: String,
    /// The section it sets a key in, e.g. `server`.
    pub section: String,
    /// The key, lower-cased, e.g. `listen`.
    pub key: String,
    /// The value as given.
    pub raw: String,
}

impl Override {
    /// The key's path as written in TOML, e.g. `server.listen`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

/// Picks the overrides for `sections` out of `vars`, sorted by variable name so the
/// result does not depend on the order of the environment.
pub fn overrides(vars: &[(String, String)], sections: &[&str]) -> Result<Vec<Override>, String> {
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort();
    let mut out = Vec::new();
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
            return Err(format!("{name} names no key"));
        }
        if is_service_link(&key, raw) {
            continue;
        }
        out.push(Override {
            variable: name.clone(),
            section: section.to_owned(),
            key,
            raw: raw.clone(),
        });
    }
    Ok(out)
}

/// Applies overrides from `vars` to `table`. An error message starts with the variable's name.
///
/// This only edits the table; [`apply`] also deserializes and blames the variable that
/// breaks deserialization.
pub fn overlay(
    table: &mut toml::Table,
    vars: &[(String, String)],
    sections: &[&str],
) -> Result<(), String> {
    for o in overrides(vars, sections)? {
        set(table, &o, parse_value(&o.raw))?;
    }
    Ok(())
}

/// Applies `overrides` to `table` (which must deserialize as `T` on its own) and
/// deserializes the result.
///
/// When the result does not deserialize (an unknown key, a value of the wrong type), the
/// error names the variable responsible, found by applying the overrides one at a time.
/// A value that parses as TOML but has the wrong type for its key is retried as a plain
/// string, so `WIF_LOG_LEVEL=true` style surprises resolve the way an operator expects.
pub fn apply<T: serde::de::DeserializeOwned>(
    mut table: toml::Table,
    overrides: &[Override],
) -> Result<T, String> {
    let mut all = table.clone();
    for o in overrides {
        set(&mut all, o, parse_value(&o.raw))?;
    }
    if let Ok(value) = all.try_into::<T>() {
        return Ok(value);
    }
    // Slow path, taken only on error: find the first variable that breaks the config.
    for o in overrides {
        let typed = parse_value(&o.raw);
        let is_string = typed.is_str();
        let mut attempt = table.clone();
        set(&mut attempt, o, typed)?;
        match attempt.clone().try_into::<T>() {
            Ok(_) => table = attempt,
            Err(typed_error) => {
                let mut as_string = table.clone();
                set(&mut as_string, o, toml::Value::String(o.raw.clone()))?;
                if !is_string && as_string.clone().try_into::<T>().is_ok() {
                    table = as_string;
                } else {
                    return Err(format!(
                        "{} sets `{}`: {}",
                        o.variable,
                        o.path(),
                        one_line(&typed_error.to_string())
                    ));
                }
            }
        }
    }
    table.try_into::<T>().map_err(|e| one_line(&e.to_string()))
}

fn set(table: &mut toml::Table, o: &Override, value: toml::Value) -> Result<(), String> {
    let entry = table
        .entry(o.section.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(section_table) = entry.as_table_mut() else {
        return Err(format!(
            "{} sets a key in `{}`, which the file defines as something other than a table",
            o.variable, o.section
        ));
    };
    section_table.insert(o.key.clone(), value);
    Ok(())
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads `raw` as a TOML value (number, boolean, array, quoted string) when it parses
/// as one, and as a plain string otherwise.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        // More than one key means the value smuggled in a newline: take it literally.
        Ok(mut t) if t.len() == 1 => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        _ => toml::Value::String(raw.to_owned()),
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
        assert_eq!(
            t["tokens"]["algorithms"].as_array().map(|a| a.len()),
            Some(1)
        );
        assert!(!t.contains_key("agent"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        server: Server,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Server {
        listen: String,
        port: u16,
        name: String,
    }

    #[test]
    fn kubernetes_service_links_are_not_overrides() {
        let found = overrides(
            &vars(&[
                ("WIF_SERVER_SERVICE_HOST", "10.0.0.1"),
                ("WIF_SERVER_SERVICE_PORT", "443"),
                ("WIF_SERVER_SERVICE_PORT_HTTPS", "443"),
                ("WIF_SERVER_PORT", "tcp://10.0.0.1:443"),
                ("WIF_SERVER_PORT_443_TCP_ADDR", "10.0.0.1"),
                ("WIF_SERVER_LISTEN", "0.0.0.0:8443"),
            ]),
            &["server"],
        )
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path(), "server.listen");
    }

    #[test]
    fn overrides_resolve_section_and_key_and_skip_the_rest() {
        let found = overrides(
            &vars(&[
                ("WIF_server_Listen", "x"),
                ("WIF_CONFIG", "/etc/wif.toml"),
                ("WIF_SERVER_URL", "https://broker"),
                ("WIF_ADMIN_TOKEN", "secret"),
                ("WIF_AGENT_LISTEN", "y"),
                ("HOME", "/root"),
            ]),
            &["server"],
        )
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variable, "WIF_server_Listen");
        assert_eq!(found[0].path(), "server.listen");
        assert_eq!(
            overrides(&vars(&[("WIF_SERVER_", "x")]), &["server"]).unwrap_err(),
            "WIF_SERVER_ names no key"
        );
    }

    #[test]
    fn apply_names_the_variable_with_an_unknown_key() {
        let found = overrides(
            &vars(&[("WIF_SERVER_LISTEN", "a"), ("WIF_SERVER_LSTEN", "b")]),
            &["server"],
        )
        .unwrap();
        let err = apply::<Doc>(toml::Table::new(), &found).unwrap_err();
        assert!(
            err.starts_with("WIF_SERVER_LSTEN sets `server.lsten`: unknown field `lsten`"),
            "{err}"
        );
    }

    #[test]
    fn apply_names_the_variable_with_a_bad_value() {
        let found = overrides(&vars(&[("WIF_SERVER_PORT", "70000")]), &["server"]).unwrap();
        let err = apply::<Doc>(toml::Table::new(), &found).unwrap_err();
        assert!(
            err.starts_with("WIF_SERVER_PORT sets `server.port`:"),
            "{err}"
        );
    }

    #[test]
    fn apply_retries_a_mistyped_value_as_a_string() {
        let found = overrides(
            &vars(&[("WIF_SERVER_NAME", "true"), ("WIF_SERVER_PORT", "8080")]),
            &["server"],
        )
        .unwrap();
        let doc = apply::<Doc>(toml::Table::new(), &found).unwrap();
        assert_eq!(doc.server.name, "true");
        assert_eq!(doc.server.port, 8080);
    }

    #[test]
    fn a_value_with_a_newline_is_taken_literally() {
        assert_eq!(
            parse_value("1\nother = 2"),
            toml::Value::String("1\nother = 2".into())
        );
        assert_eq!(
            parse_value("\"quoted\""),
            toml::Value::String("quoted".into())
        );
    }
}
