//! Signed client assertions kept for reuse (docs/assertion-sources.md, "Assertions are
//! reused while half their life is left"): a burst of cold exchanges for one identity
//! signs one assertion, not one per Entra call (an RSA signature each, a few hundred µs
//! of CPU).
//!
//! A kept assertion is handed out again only
//! - for the same key: the same signer (the broker's signing key by `kid`, a certificate by
//!   its SHA-256 thumbprint), the same claims (subject and audience, or client id and
//!   token endpoint), and the same authority host it was first signed for, so it is never
//!   sent to another host than the one it was signed to go to (and that host is checked
//!   against the operator's allow-list before every use, as for a new one);
//! - while at least half its lifetime is left (`now <= iat + lifetime / 2`), so Entra
//!   reads it well within its validity (at least 30 s left: lifetimes are 60 s or more);
//! - never when the clock reads before its `iat` (the clock went back).
//!
//! Entra accepts a client assertion more than once while it is valid (a Kubernetes
//! projected token or a CI job's token is presented for its whole life), so reuse changes
//! nothing Entra sees but the `jti` and `iat` it would otherwise have got anew.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::entra::Secret;

/// Past this many kept assertions, the stale ones are dropped (and all of them if none
/// is stale): one per identity in use, so this is only reached with very many identities.
const MAX_KEPT: usize = 4096;

struct Kept {
    signer: String,
    assertion: Secret,
    issued_at: u64,
    expires_at: u64,
}

impl Kept {
    fn usable(&self, signer: &str, now: u64) -> bool {
        self.signer == signer && reusable(self.issued_at, self.expires_at, now)
    }
}

/// Whether an assertion issued at `issued_at` and expiring at `expires_at` may be sent
/// again at `now`: at least half its life left, and the clock not before its issue.
pub fn reusable(issued_at: u64, expires_at: u64, now: u64) -> bool {
    issued_at <= now
        && now < expires_at
        && (expires_at - now).saturating_mul(2) >= expires_at.saturating_sub(issued_at)
}

/// Kept assertions by key (what they were signed for and where they go).
pub struct Reused<K> {
    kept: Mutex<HashMap<K, Kept>>,
}

impl<K> Default for Reused<K> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> Reused<K> {
    /// The assertion kept for `key`, if `signer` signed it and it is still [`reusable`].
    pub fn get(&self, key: &K, signer: &str, now: u64) -> Option<Secret> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(key)
            .filter(|k| k.usable(signer, now))
            .map(|k| k.assertion.clone())
    }

    /// Keeps `assertion`, signed by `signer` at `issued_at`, valid until `expires_at`.
    pub fn keep(&self, key: K, signer: &str, assertion: &Secret, issued_at: u64, expires_at: u64) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_KEPT && !kept.contains_key(&key) {
            kept.retain(|_, k| reusable(k.issued_at, k.expires_at, issued_at));
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        kept.insert(
            key,
            Kept {
                signer: signer.to_owned(),
                assertion: assertion.clone(),
                issued_at,
                expires_at,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_is_reused_only_in_the_first_half_of_its_life() {
        // Issued at 1000, valid 300 s.
        assert!(reusable(1000, 1300, 1000));
        assert!(reusable(1000, 1300, 1150), "exactly half left");
        assert!(!reusable(1000, 1300, 1151));
        assert!(!reusable(1000, 1300, 1300));
        assert!(!reusable(1000, 1300, 5000));
        assert!(!reusable(1000, 1300, 999), "the clock went back");
    }

    #[test]
    fn only_the_same_key_and_signer_get_it_back() {
        let reused = Reused::default();
        let one = Secret::new("assertion-one");
        reused.keep(("host-a", "sub"), "kid-1", &one, 1000, 1300);
        assert_eq!(
            reused
                .get(&("host-a", "sub"), "kid-1", 1100)
                .map(|s| s.expose().to_owned()),
            Some("assertion-one".to_owned())
        );
        assert!(reused.get(&("host-b", "sub"), "kid-1", 1100).is_none());
        assert!(reused.get(&("host-a", "other"), "kid-1", 1100).is_none());
        assert!(
            reused.get(&("host-a", "sub"), "kid-2", 1100).is_none(),
            "another key signs now"
        );
        assert!(reused.get(&("host-a", "sub"), "kid-1", 1200).is_none());
    }

    #[test]
    fn the_kept_set_stays_bounded() {
        let reused = Reused::default();
        let assertion = Secret::new("a");
        for i in 0..MAX_KEPT {
            reused.keep(i, "kid", &assertion, 1000, 1300);
        }
        assert_eq!(reused.len(), MAX_KEPT);
        // Later, every kept one is stale: they are dropped to make room.
        reused.keep(MAX_KEPT, "kid", &assertion, 2000, 2300);
        assert_eq!(reused.len(), 1);
        // All fresh: the set is cleared rather than grown.
        for i in 0..MAX_KEPT {
            reused.keep(MAX_KEPT + 1 + i, "kid", &assertion, 2000, 2300);
        }
        assert!(reused.len() <= MAX_KEPT);
    }
}
