//! GUIDs, as Entra writes tenant, client (application) and object ids:
//! `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. The workspace's one GUID rule ([`is_guid`]):
//! configuration validation, the policy's checks of identities registered through the
//! admin API and the console all use it.

use std::fmt;
use std::str::FromStr;

/// Whether `s` is a GUID in its usual form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`: hex
/// digits of either case, no braces, no `urn:uuid:` prefix, no surrounding spaces.
pub fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A GUID, parsed (see [`is_guid`]); it displays as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guid(String);

impl Guid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Guid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if is_guid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a GUID",
                s.chars().take(100).collect::<String>()
            ))
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn guids_are_recognised_in_their_usual_form() {
        assert!(is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(is_guid("72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
        assert!(is_guid("00000000-0000-0000-0000-000000000000"));
        assert!(is_guid("ABCDEF01-abcd-4000-8000-0123456789ab"));
        for bad in [
            "",
            "72f988bf86f141af91ab2d7cd011db47",
            "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "72f988bf-86f1-41af-91ab-2d7cd011db477",
            "00000000-0000-0000-0000-0000000000000",
            "72f988bg-86f1-41af-91ab-2d7cd011db47",
            "72f988bf_86f1-41af-91ab-2d7cd011db47",
            "72f988bf-86f1-41af-91ab2-d7cd011db47",
            "72f988bf-86f1-41af-91ab-2d7cd011db4é",
            " 72f988bf-86f1-41af-91ab-2d7cd011db4",
            "urn:uuid:72f988bf-86f1-41af-91ab-2d7cd011db47",
        ] {
            assert!(!is_guid(bad), "{bad}");
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
        let guid: Guid = "72F988BF-86F1-41AF-91AB-2D7CD011DB47".parse().unwrap();
        assert_eq!(guid.to_string(), "72F988BF-86F1-41AF-91AB-2D7CD011DB47");
    }
}
