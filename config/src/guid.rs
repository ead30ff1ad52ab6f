//! GUIDs, as Entra writes tenant, client (application) and object ids:
//! `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. The workspace's one GUID rule ([`is_guid`]):
//! configuration validation, the policy's checks of identities registered through the
//! admin API and the console all use it.

use std::fmt;
use std::str::FromStr;

use crate::{InvalidValue, shown};

/// Whether `s` is a GUID in its usual form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`: hex
/// digits of either case, no braces, no `urn:uuid:` prefix, no surrounding spaces.
pub fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A GUID, parsed (see [`is_guid`]); it displays, and is written by serde, as it was
/// written. The default is the nil GUID (all zeros), as `uuid`'s is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guid(String);

impl Guid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Guid {
    fn default() -> Self {
        Self("00000000-0000-0000-0000-000000000000".to_owned())
    }
}

impl FromStr for Guid {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        if is_guid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue(format!("`{}` is not a GUID", shown(s))))
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

serde_as_string!(Guid);

/// Parses `[[identities]] client_id`: a [`Guid`], refused with what to give instead.
pub(crate) fn parse_client_id(text: &str) -> Result<Guid, InvalidValue> {
    text.parse().map_err(|_| {
        InvalidValue(format!(
            "`{}` is not a GUID; give the application (client) ID of the app registration or \
             managed identity, such as 7c4f1a3e-0000-4000-8000-000000000001",
            shown(text)
        ))
    })
}

/// Reads `[[identities]] client_id` with [`parse_client_id`].
pub(crate) fn client_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Guid, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_client_id(&text).map_err(serde::de::Error::custom)
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
        assert_eq!(
            serde_json::to_string(&guid).unwrap(),
            "\"72F988BF-86F1-41AF-91AB-2D7CD011DB47\""
        );
        assert_eq!(
            serde_json::from_str::<Guid>("\"72F988BF-86F1-41AF-91AB-2D7CD011DB47\"").unwrap(),
            guid
        );
        let err = serde_json::from_str::<Guid>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("`nope` is not a GUID"), "{err}");
        assert!(is_guid(Guid::default().as_str()));
    }
}
