//! The broker as an OIDC issuer (`assertion = "broker"`): its signing keys, their rotation,
//! the JWKS it publishes, and the short assertions it signs.
//!
//! Keys come from files (`signing_key_file` signs, `published_key_files` are only
//! published: a manual rotation's next and previous keys) or are generated and kept in the
//! store. Generated keys rotate on their own: the next key is published
//! `publish_ahead_hours` before it signs, so every verifier's cached JWKS already holds it;
//! a replaced key stays published until the last assertion it signed has expired. Either
//! way, a key this process signed with is never dropped from the JWKS while an assertion it
//! signed may still be presented.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use wif_config::BrokerIssuerConfig;

use super::reuse::Reused;
use super::rsa::{KeyError, RsaKey};
use crate::clock::SharedClock;
use crate::entra::Secret;
use crate::store::{Store, StoreError, StoredSigningKey};

/// Seconds a retired key outlives its last assertion, for verifiers' clock skew.
const RETIRE_LEEWAY_SECS: u64 = 60;

/// After a failed refresh, requests do not try again for this long.
const FAILURE_HOLD_OFF_SECS: u64 = 5;

/// Why the issuer has no usable key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssuerKeyError {
    #[error("cannot read the signing key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {error}")]
    Key { path: String, error: KeyError },
    #[error("a generated signing key in the store is unreadable: {0}")]
    StoredKey(KeyError),
    #[error("the signing keys cannot be read from the store: {0}")]
    Store(StoreError),
    #[error("no signing key is available yet")]
    NoKey,
    #[error("cannot sign the assertion: {0}")]
    Sign(KeyError),
}

/// What a refresh produced: the key that signs, every key published, and when to look
/// again (a key becomes active or a retired key's last assertion expires).
struct KeySet {
    signing: Option<Arc<RsaKey>>,
    published: Vec<Arc<RsaKey>>,
    refresh_at: u64,
}

/// Where keys come from, and what a refresh remembers between runs.
enum Source {
    Store {
        store: Arc<dyn Store>,
        rotation_secs: u64,
        ahead_secs: u64,
        /// Parsed keys by generation, so a refresh does not parse every key again.
        parsed: HashMap<i64, Arc<RsaKey>>,
    },
    Files {
        signing: PathBuf,
        published: Vec<PathBuf>,
        /// File contents and the key parsed from them.
        parsed: HashMap<PathBuf, (Vec<u8>, Arc<RsaKey>)>,
        /// Keys that signed here before the signing file changed, published until.
        retired: Vec<(Arc<RsaKey>, u64)>,
    },
    /// Neither a key file nor a store (`check-config`).
    Nothing,
}

/// The broker's issuer identity.
pub struct BrokerIssuer {
    url: String,
    lifetime_secs: u64,
    reload_secs: u64,
    clock: SharedClock,
    keys: ArcSwap<KeySet>,
    source: tokio::sync::Mutex<Source>,
    /// Assertions signed, by (authority host, subject, audience), reused while at least
    /// half their life is left ([`super::reuse`]).
    reused: Reused<(String, String, String)>,
}

impl std::fmt::Debug for BrokerIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerIssuer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl BrokerIssuer {
    /// `None` when `[broker_issuer] url` is unset. Keys are loaded by [`Self::refresh`].
    pub fn from_config(
        cfg: &BrokerIssuerConfig,
        store: Option<Arc<dyn Store>>,
        clock: SharedClock,
    ) -> Option<Self> {
        let url = cfg.url.as_ref()?.clone();
        let source = match (&cfg.signing_key_file, store) {
            (Some(signing), _) => Source::Files {
                signing: signing.clone(),
                published: cfg.published_key_files.clone(),
                parsed: Default::default(),
                retired: Vec::new(),
            },
            (None, Some(store)) => Source::Store {
                store,
                rotation_secs: cfg.rotation_days.saturating_mul(86_400),
                ahead_secs: cfg.publish_ahead_hours.saturating_mul(3600),
                parsed: Default::default(),
            },
            // No store (check-config): nothing to sign with, nothing to publish.
            (None, None) => Source::Nothing,
        };
        Some(Self {
            url: url.trim_end_matches('/').to_owned(),
            lifetime_secs: cfg.assertion_lifetime_secs,
            reload_secs: cfg.reload_secs,
            clock,
            keys: ArcSwap::from_pointee(KeySet {
                signing: None,
                published: Vec::new(),
                refresh_at: 0,
            }),
            source: tokio::sync::Mutex::new(source),
            reused: Reused::default(),
        })
    }

    /// The issuer URL, the `iss` of every assertion.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reloads the key files or the store's keys, generating or rotating keys as due.
    /// On failure the keys in use stay in use.
    pub async fn refresh(&self) -> Result<(), IssuerKeyError> {
        self.refresh_if(|| true).await
    }

    /// Refreshes under the lock when `due()` still holds there, so requests that all
    /// find the keys due make one refresh, not one each.
    async fn refresh_if(&self, due: impl Fn() -> bool) -> Result<(), IssuerKeyError> {
        let mut source = self.source.lock().await;
        if !due() {
            return Ok(());
        }
        let now = self.clock.now();
        match self.load(&mut source, now).await {
            Ok(set) => {
                self.keys.store(Arc::new(set));
                Ok(())
            }
            Err(e) => {
                // Keep the keys in use, and do not retry on every request.
                let old = self.keys.load_full();
                self.keys.store(Arc::new(KeySet {
                    signing: old.signing.clone(),
                    published: old.published.clone(),
                    refresh_at: now + FAILURE_HOLD_OFF_SECS,
                }));
                Err(e)
            }
        }
    }

    async fn load(&self, source: &mut Source, now: u64) -> Result<KeySet, IssuerKeyError> {
        Ok(match source {
            Source::Files {
                signing,
                published,
                parsed,
                retired,
            } => {
                // File changes are noticed by the periodic refresh.
                let set = load_files(signing, published, parsed, u64::MAX)?;
                if let (Some(old), Some(new)) = (self.keys.load().signing.clone(), &set.signing)
                    && old.kid() != new.kid()
                {
                    tracing::info!(old = old.kid(), new = new.kid(), "signing key file changed");
                    retired.push((old, now + self.lifetime_secs + RETIRE_LEEWAY_SECS));
                }
                with_retired(set, retired, now)
            }
            Source::Store {
                store,
                rotation_secs,
                ahead_secs,
                parsed,
            } => {
                let rules = Rotation {
                    rotation_secs: *rotation_secs,
                    ahead_secs: *ahead_secs,
                    retire_after_secs: self.lifetime_secs + RETIRE_LEEWAY_SECS,
                };
                load_store(store.as_ref(), &rules, parsed, now).await?
            }
            Source::Nothing => return Err(IssuerKeyError::NoKey),
        })
    }

    /// The current keys, refreshed first when a scheduled change is due.
    async fn current(&self) -> Arc<KeySet> {
        let keys = self.keys.load_full();
        if self.clock.now() < keys.refresh_at {
            return keys;
        }
        let due = || self.clock.now() >= self.keys.load().refresh_at;
        if let Err(e) = self.refresh_if(due).await {
            tracing::warn!(error = %e, "cannot refresh the broker's signing keys; keeping the current ones");
        }
        self.keys.load_full()
    }

    /// `GET /.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"],
        })
    }

    /// `GET /.well-known/jwks.json`: the signing key, the next key, and retired keys whose
    /// assertions may still be presented.
    pub async fn jwks(&self) -> Value {
        let keys = self.current().await;
        json!({ "keys": keys.published.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() })
    }

    /// A client assertion for Entra: RS256, `iss` = this issuer, the given `sub` and `aud`,
    /// valid for `assertion_lifetime_secs`, with a fresh `jti`.
    pub async fn sign(&self, subject: &str, audience: &str) -> Result<Secret, IssuerKeyError> {
        let keys = self.current().await;
        let key = keys.signing.as_ref().ok_or(IssuerKeyError::NoKey)?;
        self.sign_with(key, subject, audience, self.clock.now())
    }

    /// [`Self::sign`]'s assertion for a token request to `authority_host`: the one signed
    /// for the same host, subject and audience by the key that signs now, while at least
    /// half its life is left ([`super::reuse`]); otherwise a new one, kept for the next.
    pub async fn assertion_for(
        &self,
        authority_host: &str,
        subject: &str,
        audience: &str,
    ) -> Result<Secret, IssuerKeyError> {
        let keys = self.current().await;
        let key = keys.signing.as_ref().ok_or(IssuerKeyError::NoKey)?;
        let now = self.clock.now();
        let kept_as = (
            authority_host.to_owned(),
            subject.to_owned(),
            audience.to_owned(),
        );
        if let Some(assertion) = self.reused.get(&kept_as, key.kid(), now) {
            return Ok(assertion);
        }
        let assertion = self.sign_with(key, subject, audience, now)?;
        self.reused.keep(
            kept_as,
            key.kid(),
            &assertion,
            now,
            now + self.lifetime_secs,
        );
        Ok(assertion)
    }

    fn sign_with(
        &self,
        key: &RsaKey,
        subject: &str,
        audience: &str,
        now: u64,
    ) -> Result<Secret, IssuerKeyError> {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid() });
        let claims = json!({
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "iat": now,
            // A minute of slack for a verifier whose clock is behind ours.
            "nbf": now.saturating_sub(60),
            "exp": now + self.lifetime_secs,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        key.sign(&header, &claims).map_err(IssuerKeyError::Sign)
    }

    /// Refreshes every `reload_secs` until the broker stops.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let issuer = Arc::clone(self);
        tokio::spawn(async move {
            let period = std::time::Duration::from_secs(issuer.reload_secs.max(1));
            loop {
                tokio::time::sleep(period).await;
                if let Err(e) = issuer.refresh().await {
                    tracing::warn!(error = %e, "cannot refresh the broker's signing keys; keeping the current ones");
                }
            }
        })
    }
}

/// Adds the keys that signed here before the signing file changed, while assertions they
/// signed may still be presented.
fn with_retired(mut set: KeySet, retired: &mut Vec<(Arc<RsaKey>, u64)>, now: u64) -> KeySet {
    retired.retain(|(_, until)| *until > now);
    for (key, until) in retired.iter() {
        if !set.published.iter().any(|k| k.kid() == key.kid()) {
            set.published.push(key.clone());
        }
        set.refresh_at = set.refresh_at.min(*until);
    }
    set
}

fn read_key(
    path: &Path,
    parsed: &mut HashMap<PathBuf, (Vec<u8>, Arc<RsaKey>)>,
) -> Result<Option<Arc<RsaKey>>, IssuerKeyError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IssuerKeyError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    if let Some((known, key)) = parsed.get(path)
        && *known == bytes
    {
        return Ok(Some(key.clone()));
    }
    let key = Arc::new(
        RsaKey::from_pem(&bytes).map_err(|error| IssuerKeyError::Key {
            path: path.display().to_string(),
            error,
        })?,
    );
    parsed.insert(path.to_owned(), (bytes, key.clone()));
    Ok(Some(key))
}

fn load_files(
    signing: &Path,
    published: &[PathBuf],
    parsed: &mut HashMap<PathBuf, (Vec<u8>, Arc<RsaKey>)>,
    refresh_at: u64,
) -> Result<KeySet, IssuerKeyError> {
    let key = read_key(signing, parsed)?.ok_or_else(|| IssuerKeyError::Read {
        path: signing.display().to_string(),
        reason: "no such file".into(),
    })?;
    let mut keys = vec![key.clone()];
    for path in published {
        // A missing next/previous key is normal between rotations; a broken one is not.
        if let Some(k) = read_key(path, parsed)?
            && !keys.iter().any(|p| p.kid() == k.kid())
        {
            keys.push(k);
        }
    }
    Ok(KeySet {
        signing: Some(key),
        published: keys,
        refresh_at,
    })
}

/// The rotation rules for generated keys.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    rotation_secs: u64,
    ahead_secs: u64,
    retire_after_secs: u64,
}

/// What to do with the stored keys at `now`. Keys are `(generation, active_from)`, by
/// increasing generation. Pure, so every replica with the same rows decides the same.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Generation that signs.
    signing: Option<i64>,
    /// Generations in the JWKS.
    published: Vec<i64>,
    /// A key to generate: `(generation, active_from)`.
    create: Option<(i64, u64)>,
    /// Keys below this generation are past use and may be deleted.
    delete_before: Option<i64>,
    /// When the plan changes next.
    refresh_at: u64,
}

fn plan(keys: &[(i64, u64)], now: u64, rules: &Rotation) -> Plan {
    let Some(&(last_generation, _)) = keys.last() else {
        return Plan {
            signing: None,
            published: Vec::new(),
            create: Some((1, now)),
            delete_before: None,
            refresh_at: now,
        };
    };
    // The newest key whose time has come; if the clock went back before every key, the
    // oldest (a key must sign).
    let signing_index = keys.iter().rposition(|&(_, from)| from <= now).unwrap_or(0);
    let (signing, signing_from) = keys[signing_index];
    let mut refresh_at = u64::MAX;
    let mut create = None;
    if last_generation == signing {
        let due = signing_from
            .saturating_add(rules.rotation_secs)
            .saturating_sub(rules.ahead_secs);
        if now >= due {
            create = Some((signing + 1, now + rules.ahead_secs));
        } else {
            refresh_at = due;
        }
    }
    let mut published = Vec::new();
    let mut delete_before = None;
    for (i, &(generation, from)) in keys.iter().enumerate() {
        if i >= signing_index {
            published.push(generation);
            if from > now {
                refresh_at = refresh_at.min(from);
            }
            continue;
        }
        // Replaced when its successor began to sign; its last assertion expires after.
        let until = keys[i + 1].1.saturating_add(rules.retire_after_secs);
        if now < until {
            published.push(generation);
            refresh_at = refresh_at.min(until);
        } else {
            delete_before = Some(generation + 1);
        }
    }
    Plan {
        signing: Some(signing),
        published,
        create,
        delete_before,
        refresh_at,
    }
}

async fn load_store(
    store: &dyn Store,
    rules: &Rotation,
    parsed: &mut HashMap<i64, Arc<RsaKey>>,
    now: u64,
) -> Result<KeySet, IssuerKeyError> {
    let mut rows = store
        .list_signing_keys()
        .await
        .map_err(IssuerKeyError::Store)?;
    // At most one key is created per refresh; a second pass reads what won the race.
    for _ in 0..2 {
        let times: Vec<(i64, u64)> = rows.iter().map(|r| (r.generation, r.active_from)).collect();
        let decided = plan(&times, now, rules);
        let Some((generation, active_from)) = decided.create else {
            if let Some(before) = decided.delete_before
                && let Err(e) = store.delete_signing_keys_before(before).await
            {
                tracing::warn!(error = %e, "cannot delete retired signing keys");
            }
            return key_set(&rows, &decided, parsed);
        };
        let key = tokio::task::spawn_blocking(RsaKey::generate)
            .await
            .map_err(|_| IssuerKeyError::NoKey)?
            .map_err(IssuerKeyError::StoredKey)?;
        let row = StoredSigningKey {
            generation,
            kid: key.kid().to_owned(),
            private_key: key.to_pkcs8_base64().map_err(IssuerKeyError::StoredKey)?,
            created_at: now,
            active_from,
        };
        let inserted = store
            .insert_signing_key(&row)
            .await
            .map_err(IssuerKeyError::Store)?;
        if inserted {
            tracing::info!(
                generation,
                kid = key.kid(),
                active_from,
                "generated a signing key"
            );
            parsed.insert(generation, Arc::new(key));
        }
        rows = store
            .list_signing_keys()
            .await
            .map_err(IssuerKeyError::Store)?;
    }
    let times: Vec<(i64, u64)> = rows.iter().map(|r| (r.generation, r.active_from)).collect();
    key_set(&rows, &plan(&times, now, rules), parsed)
}

fn key_set(
    rows: &[StoredSigningKey],
    decided: &Plan,
    parsed: &mut HashMap<i64, Arc<RsaKey>>,
) -> Result<KeySet, IssuerKeyError> {
    parsed.retain(|generation, _| decided.published.contains(generation));
    let mut published = Vec::new();
    for row in rows
        .iter()
        .filter(|r| decided.published.contains(&r.generation))
    {
        let key = match parsed.get(&row.generation) {
            Some(key) => key.clone(),
            None => {
                let key = Arc::new(
                    RsaKey::from_pkcs8_base64(row.private_key.expose())
                        .map_err(IssuerKeyError::StoredKey)?,
                );
                parsed.insert(row.generation, key.clone());
                key
            }
        };
        published.push((row.generation, key));
    }
    let signing = published
        .iter()
        .find(|(g, _)| Some(*g) == decided.signing)
        .map(|(_, k)| k.clone());
    Ok(KeySet {
        signing,
        published: published.into_iter().map(|(_, k)| k).collect(),
        refresh_at: decided.refresh_at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: u64 = 86_400;

    fn key_pem() -> String {
        super::super::rsa::test_key_pem()
    }

    fn claims(assertion: &Secret) -> Value {
        use base64::Engine;
        let payload = assertion.expose().split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn kid(assertion: &Secret) -> String {
        use base64::Engine;
        let header = assertion.expose().split('.').next().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        let header: Value = serde_json::from_slice(&bytes).unwrap();
        header["kid"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn an_assertion_is_reused_for_its_host_while_half_its_life_is_left() {
        use crate::clock::Clock;
        crate::crypto::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let signing = dir.path().join("signing.pem");
        std::fs::write(&signing, key_pem()).unwrap();
        let clock = crate::clock::OffsetClock::new();
        let cfg = BrokerIssuerConfig {
            url: Some("https://broker.example".into()),
            signing_key_file: Some(signing.clone()),
            ..Default::default()
        };
        let issuer = BrokerIssuer::from_config(&cfg, None, clock.clone()).unwrap();
        let (public, us) = (
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.us",
        );
        let aud = "api://AzureADTokenExchange";

        let first = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        let c = claims(&first);
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
        let again = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        assert_eq!(again.expose(), first.expose(), "reused");
        // Never for another host, subject or audience.
        for (host, subject, audience) in [
            (us, "fleet", aud),
            (public, "other", aud),
            (public, "fleet", "api://AzureADTokenExchangeUSGov"),
        ] {
            let other = issuer.assertion_for(host, subject, audience).await.unwrap();
            assert_ne!(
                other.expose(),
                first.expose(),
                "{host} {subject} {audience}"
            );
            assert_eq!(claims(&other)["sub"], subject);
            assert_eq!(claims(&other)["aud"], audience);
        }
        // Plain signing always signs anew.
        let signed = issuer.sign("fleet", aud).await.unwrap();
        assert_ne!(signed.expose(), first.expose());

        // Within the first half of its 300 s: still the same one.
        clock.advance(140);
        let later = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        assert_eq!(later.expose(), first.expose());
        // Past it: a new one, which is then the one reused.
        clock.advance(20);
        let renewed = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        assert_ne!(renewed.expose(), first.expose());
        let now = clock.now();
        let c = claims(&renewed);
        assert!(c["iat"].as_u64().unwrap() + 1 >= now && c["exp"].as_u64().unwrap() > now + 290);
        assert_eq!(
            issuer
                .assertion_for(public, "fleet", aud)
                .await
                .unwrap()
                .expose(),
            renewed.expose()
        );

        // Another signing key: the kept assertion is not reused.
        std::fs::write(&signing, key_pem()).unwrap();
        issuer.refresh().await.unwrap();
        let rotated = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        assert_ne!(kid(&rotated), kid(&renewed));

        // The clock set back before the kept one was issued: a new one.
        clock.advance(-1000);
        let back = issuer.assertion_for(public, "fleet", aud).await.unwrap();
        assert_ne!(back.expose(), rotated.expose());
    }
    const RULES: Rotation = Rotation {
        rotation_secs: 30 * DAY,
        ahead_secs: DAY,
        retire_after_secs: 360,
    };

    #[test]
    fn the_first_key_is_created_at_once() {
        let p = plan(&[], 1000, &RULES);
        assert_eq!(p.create, Some((1, 1000)));
        assert_eq!(p.signing, None);
    }

    #[test]
    fn a_young_key_signs_alone_until_the_next_is_due() {
        let p = plan(&[(1, 1000)], 1000 + DAY, &RULES);
        assert_eq!(p.signing, Some(1));
        assert_eq!(p.published, vec![1]);
        assert_eq!(p.create, None);
        assert_eq!(p.refresh_at, 1000 + 29 * DAY);
    }

    #[test]
    fn the_next_key_is_published_a_day_before_it_signs() {
        let now = 1000 + 29 * DAY;
        let p = plan(&[(1, 1000)], now, &RULES);
        assert_eq!(p.create, Some((2, now + DAY)));

        let p = plan(&[(1, 1000), (2, now + DAY)], now + 10, &RULES);
        assert_eq!(p.signing, Some(1), "the next key does not sign yet");
        assert_eq!(p.published, vec![1, 2], "but it is published");
        assert_eq!(p.create, None);
        assert_eq!(p.refresh_at, now + DAY);
    }

    #[test]
    fn the_old_key_stays_published_until_its_last_assertion_expires() {
        let switch = 1000 + 30 * DAY;
        let keys = [(1, 1000), (2, switch)];
        let p = plan(&keys, switch, &RULES);
        assert_eq!(p.signing, Some(2));
        assert_eq!(p.published, vec![1, 2]);
        assert_eq!(p.refresh_at, switch + 360);
        assert_eq!(p.delete_before, None);

        let p = plan(&keys, switch + 360, &RULES);
        assert_eq!(p.published, vec![2]);
        assert_eq!(p.delete_before, Some(2));
    }

    #[test]
    fn a_clock_gone_back_still_signs_with_the_oldest_key() {
        let p = plan(&[(3, 5000), (4, 9000)], 10, &RULES);
        assert_eq!(p.signing, Some(3));
        assert_eq!(p.published, vec![3, 4]);
    }
}
