//! JWT signature algorithms the broker verifies (`[tokens] algorithms`, an issuer's
//! `algorithms`), parsed here once: the broker maps each [`Algorithm`] to its verifier and
//! never reads the names itself.

use std::fmt;
use std::str::FromStr;

/// Every algorithm the broker can verify. `none` and HMAC are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// All of them, in the order of [`crate::ALGORITHMS`].
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The name as JOSE writes it (`alg`), case-sensitive.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message says why a name is refused, for the operator who wrote it.
impl FromStr for Algorithm {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if let Some(alg) = Self::ALL.into_iter().find(|a| a.as_str() == name) {
            return Ok(alg);
        }
        let shown: String = name.chars().take(100).collect();
        Err(if name.eq_ignore_ascii_case("none") {
            "`none` is never accepted: an unsigned token proves nothing about who sent it"
                .to_owned()
        } else if name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
            format!(
                "`{shown}` is never accepted: HMAC algorithms need a secret shared with the \
                 issuer, and anyone holding it could mint tokens; use the issuer's public \
                 keys (RS256, ES256, ...)"
            )
        } else if let Some(known) = Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(name))
        {
            format!(
                "`{shown}` is not an algorithm name (names are case-sensitive); did you mean `{known}`?"
            )
        } else {
            format!(
                "`{shown}` is not a supported algorithm; supported: {}",
                crate::ALGORITHMS.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_parse_exactly_and_refusals_say_why() {
        assert_eq!(
            Algorithm::ALL.map(Algorithm::as_str).as_slice(),
            crate::ALGORITHMS
        );
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>().unwrap(), alg);
        }
        assert!(
            "none"
                .parse::<Algorithm>()
                .unwrap_err()
                .contains("never accepted")
        );
        assert!("hs256".parse::<Algorithm>().unwrap_err().contains("HMAC"));
        assert!(
            "rs256"
                .parse::<Algorithm>()
                .unwrap_err()
                .contains("did you mean `RS256`?")
        );
        assert!(
            "RS1"
                .parse::<Algorithm>()
                .unwrap_err()
                .contains("supported: RS256")
        );
        assert!(
            "H".parse::<Algorithm>()
                .unwrap_err()
                .contains("not a supported")
        );
        assert!(
            "é".parse::<Algorithm>()
                .unwrap_err()
                .contains("not a supported")
        );
    }
}
