//! The registry: identities and their federated credentials, indexed for matching.
//!
//! A registry is immutable once built; changes build a new one and swap it in whole, so an
//! exchange always sees one consistent version. Matching looks up the token's issuer,
//! then its exact subject in a hash index, then evaluates the issuer's expression rules.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wif_config::{AssertionSource, BrokerConfig, Cloud, FederatedCredentialConfig};

use super::authority::AuthorityHosts;
use super::conditions::{Conditions, Restrictions};
use super::ffl::Expression;
use super::rules::{self, CredentialSpec, RuleOptions};
use crate::store::{StoredCredential, StoredIdentity};
use crate::token::VerifiedToken;

/// An Entra identity (app registration or user-assigned managed identity).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub authority_host: String,
    pub cloud: Option<Cloud>,
    pub assertion: AssertionSource,
    /// `sub` of the broker's assertions (`assertion = "broker"`); default: the name.
    pub assertion_subject: Option<String>,
    /// Certificate and key files (`assertion = "certificate"`; declared identities only).
    pub certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Declared in the config file; the admin API may not change it.
    pub read_only: bool,
    /// Epoch seconds, for API-registered identities.
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
    /// Disabled, allowed scopes, rate limit (docs/admin.md, "Least privilege").
    pub conditions: Conditions,
}

/// How a credential decides on a token's subject.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectRule {
    /// Shared with the key of the issuer's exact-subject index.
    Exact(Arc<str>),
    Expression(Box<Expression>),
}

/// A federated credential: tokens from `issuer` matching `rule` with `audience` may act
/// as `identity`.
///
/// One compact value per credential, since a registry may hold a million of them
/// (docs/PERFORMANCE.md, "Scale"): the issuer and audience are interned (one allocation
/// per distinct value, shared by every credential using it), the name and exact subject
/// are shared with the keys of the maps that index them, and conditions that restrict
/// nothing are one shared value.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    /// A UUID for API-registered credentials, `config:<name>` for declared ones.
    pub id: Box<str>,
    pub name: Arc<str>,
    pub identity: Arc<Identity>,
    pub issuer: Arc<str>,
    pub rule: SubjectRule,
    pub audience: Arc<str>,
    pub description: Option<Box<str>>,
    /// Each token is accepted once (replay protection, recorded in the store).
    pub one_time_use: bool,
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
    /// The broker's own controls on what the credential admits (docs/admin.md, "Least
    /// privilege").
    pub conditions: Arc<Conditions>,
}

/// The conditions of a credential that restricts nothing: one value, shared.
fn unrestricted() -> Arc<Conditions> {
    static NONE: std::sync::LazyLock<Arc<Conditions>> =
        std::sync::LazyLock::new(|| Arc::new(Conditions::default()));
    NONE.clone()
}

/// `conditions` as a credential holds them: the shared value when they restrict nothing.
fn shared_conditions(conditions: Conditions) -> Arc<Conditions> {
    if conditions == Conditions::default() {
        unrestricted()
    } else {
        Arc::new(conditions)
    }
}

/// The credentials sharing one index key: almost always one, so without a list.
#[derive(Debug, Clone)]
enum Bucket {
    One(Arc<Credential>),
    Many(Arc<Vec<Arc<Credential>>>),
}

impl Bucket {
    fn as_slice(&self) -> &[Arc<Credential>] {
        match self {
            Bucket::One(c) => std::slice::from_ref(c),
            Bucket::Many(list) => list,
        }
    }

    fn with(&self, cred: Arc<Credential>) -> Bucket {
        let mut list = self.as_slice().to_vec();
        list.push(cred);
        Bucket::Many(Arc::new(list))
    }

    /// This bucket without `cred` (by pointer); `None` when nothing is left.
    fn without(&self, cred: &Arc<Credential>) -> Option<Bucket> {
        let mut rest: Vec<Arc<Credential>> = self
            .as_slice()
            .iter()
            .filter(|c| !Arc::ptr_eq(c, cred))
            .cloned()
            .collect();
        match rest.len() {
            0 => None,
            1 => rest.pop().map(Bucket::One),
            _ => Some(Bucket::Many(Arc::new(rest))),
        }
    }
}

type Index = imbl::HashMap<Arc<str>, Bucket>;

/// Adds `cred` under `key`.
fn add_to(map: &mut Index, key: Arc<str>, cred: &Arc<Credential>) {
    let bucket = match map.get(&*key) {
        Some(bucket) => bucket.with(cred.clone()),
        None => Bucket::One(cred.clone()),
    };
    map.insert(key, bucket);
}

/// One issuer's credentials, indexed for matching. Persistent maps: a clone shares them,
/// and a change copies only the path to what it touches.
#[derive(Debug, Default, Clone)]
struct IssuerIndex {
    exact: Index,
    /// Expressions whose `sub` clause fixes a literal start, by that literal: a token is
    /// tried only against those whose literal starts its `sub`.
    by_sub_prefix: Index,
    /// The distinct lengths (bytes) of the keys of `by_sub_prefix`, ascending, each with
    /// how many credentials use it.
    prefix_lengths: Vec<(usize, usize)>,
    /// Expressions without such a literal, by (identity, name): tried for every token of
    /// the issuer.
    expressions: imbl::OrdMap<(String, Arc<str>), Arc<Credential>>,
    /// How many credentials the index holds.
    len: usize,
}

/// Removes `cred` (by pointer) from a list in `map`, dropping the key when it empties.
fn remove_from(map: &mut Index, key: &str, cred: &Arc<Credential>) {
    let Some(bucket) = map.get(key) else { return };
    match bucket.without(cred) {
        Some(rest) => {
            if let Some(slot) = map.get_mut(key) {
                *slot = rest;
            }
        }
        None => {
            map.remove(key);
        }
    }
}

impl IssuerIndex {
    fn add(&mut self, cred: &Arc<Credential>) {
        self.len += 1;
        match &cred.rule {
            SubjectRule::Exact(subject) => add_to(&mut self.exact, subject.clone(), cred),
            SubjectRule::Expression(expression) => match expression.sub_prefix() {
                Some(prefix) => {
                    match self
                        .prefix_lengths
                        .binary_search_by_key(&prefix.len(), |p| p.0)
                    {
                        Ok(at) => self.prefix_lengths[at].1 += 1,
                        Err(at) => self.prefix_lengths.insert(at, (prefix.len(), 1)),
                    }
                    add_to(&mut self.by_sub_prefix, Arc::from(prefix), cred);
                }
                None => {
                    self.expressions.insert(
                        (cred.identity.name.clone(), cred.name.clone()),
                        cred.clone(),
                    );
                }
            },
        }
    }

    fn remove(&mut self, cred: &Arc<Credential>) {
        self.len = self.len.saturating_sub(1);
        match &cred.rule {
            SubjectRule::Exact(subject) => remove_from(&mut self.exact, subject, cred),
            SubjectRule::Expression(expression) => match expression.sub_prefix() {
                Some(prefix) => {
                    remove_from(&mut self.by_sub_prefix, prefix, cred);
                    if let Ok(at) = self
                        .prefix_lengths
                        .binary_search_by_key(&prefix.len(), |p| p.0)
                    {
                        self.prefix_lengths[at].1 -= 1;
                        if self.prefix_lengths[at].1 == 0 {
                            self.prefix_lengths.remove(at);
                        }
                    }
                }
                None => {
                    self.expressions
                        .remove(&(cred.identity.name.clone(), cred.name.clone()));
                }
            },
        }
    }

    /// The expression credentials worth evaluating for a token with this `sub`.
    fn expression_candidates<'a>(&'a self, sub: Option<&'a str>) -> Vec<&'a Arc<Credential>> {
        let mut out: Vec<&Arc<Credential>> = match sub {
            Some(sub) => self
                .prefix_lengths
                .iter()
                .take_while(|(len, _)| *len <= sub.len())
                .filter_map(|(len, _)| sub.get(..*len))
                .filter_map(|prefix| self.by_sub_prefix.get(prefix))
                .flat_map(Bucket::as_slice)
                .collect(),
            // A `sub` that is absent or not a string: no literal to look up by.
            None => self
                .by_sub_prefix
                .values()
                .flat_map(Bucket::as_slice)
                .collect(),
        };
        out.extend(self.expressions.values());
        out
    }
}

/// Why a verified token matched no credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    #[error("no federated credential matches this token")]
    NoCredential,
    #[error(
        "a federated credential matches the subject but not the token's audience; expected {expected}"
    )]
    Audience { expected: String },
}

/// Why no identity could be chosen among the matched ones.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error("this token may not act as the requested identity")]
    NotAllowed,
    #[error("this token may act as several identities ({}); name one with `identity` or `client_id`", .0.join(", "))]
    Ambiguous(Vec<String>),
}

/// A problem found while building a registry, naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for BuildProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Identities and credentials, indexed by issuer. Every map is persistent, so a registry
/// is cheap to clone and a change to one entry ([`Registry::apply`]) costs O(log n), not a
/// rebuild: admin writes stay fast with a million credentials (docs/PERFORMANCE.md).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    identities: imbl::OrdMap<String, Arc<Identity>>,
    /// Lower-cased names, to the name: names differing only in case are one name.
    lower_names: imbl::HashMap<String, String>,
    /// Lower-cased client ids, to the identity using it.
    client_ids: imbl::HashMap<String, String>,
    /// Names and broker-assertion subjects, to the identity claiming them.
    claims: imbl::HashMap<String, String>,
    /// Each identity's broker-assertion subject (`assertion_subject`, else its name): one
    /// identity per subject, so the broker signs an assertion for subject S only for the
    /// identity (tenant and client id) owning S (docs/assertion-sources.md).
    assertion_subjects: imbl::HashMap<String, Arc<Identity>>,
    /// Credentials by identity, then name (the key is the credential's own name).
    credentials: imbl::OrdMap<String, imbl::OrdMap<Arc<str>, Arc<Credential>>>,
    credential_count: usize,
    /// The key is the issuer every credential of it shares (interned).
    by_issuer: imbl::HashMap<Arc<str>, IssuerIndex>,
    /// Every audience in use, interned: credentials share one allocation per value.
    audiences: imbl::HashMap<Arc<str>, ()>,
    /// `[[issuers]]` of the config file: trusted even without a credential.
    explicit_issuers: Arc<HashSet<String>>,
    /// How many entries the last build left out. While some are, a change may let one
    /// back in, so [`Registry::apply`] declines and the registry is built whole.
    left_out: usize,
}

/// A registry being built from the declared one and the stored rows, credential by
/// credential as the store sends them ([`crate::store::RegistryStore::each_credential`]):
/// each row is dropped once its credential is in, so the rows and the registry are never
/// both held whole.
pub struct StoredBuild<'a> {
    declared: &'a Declared,
    registry: Registry,
    /// The stored identities that went in, by name.
    stored: HashMap<String, Arc<Identity>>,
    problems: Vec<BuildProblem>,
}

impl<'a> StoredBuild<'a> {
    /// The declared registry (built once, at start; a clone shares all of it) with the
    /// stored identities added.
    pub fn new(declared: &'a Declared, identities: &[StoredIdentity]) -> Self {
        let mut registry = declared.registry.clone();
        let mut problems = Vec::new();
        let mut stored = HashMap::new();
        for s in identities {
            match declared.stored_identity(s) {
                Ok(identity) => {
                    stored.insert(s.name.clone(), identity.clone());
                    if let Inserted::LeftOut(p) = registry.insert_identity(identity) {
                        problems.push(p);
                    }
                }
                Err(p) => problems.push(p),
            }
        }
        Self {
            declared,
            registry,
            stored,
            problems,
        }
    }

    /// Adds a stored credential (of an identity that went in; others are skipped).
    pub fn credential(&mut self, c: StoredCredential) {
        let Some(identity) = self.stored.get(c.identity.as_str()) else {
            return;
        };
        match self.declared.stored_credential(identity, &c) {
            Ok(cred) => {
                if let Inserted::LeftOut(p) = self.registry.insert_credential(Arc::new(cred)) {
                    self.problems.push(p);
                }
            }
            Err(p) => self.problems.push(p),
        }
    }

    /// The registry, and what was left out of it.
    pub fn finish(mut self) -> (Registry, Vec<BuildProblem>) {
        self.registry.left_out = self.problems.len();
        (self.registry, self.problems)
    }
}

/// What inserting one entry did.
#[derive(Debug)]
enum Inserted {
    Yes,
    /// A credential of an identity that is not in the registry (left out): it goes too.
    Skipped,
    LeftOut(BuildProblem),
}

/// A registry change read back from the store: the named entry as it is stored now
/// (`None`: it no longer exists).
#[derive(Debug, Clone)]
pub enum StoredChange {
    /// The identity and all its credentials.
    Identity {
        name: String,
        now: Option<(StoredIdentity, Vec<StoredCredential>)>,
    },
    Credential {
        identity: String,
        name: String,
        now: Option<StoredCredential>,
    },
}

impl Registry {
    /// Builds the declarative registry from the config file, applying Entra's rules.
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, Vec<BuildProblem>> {
        Ok(Declared::from_config(cfg)?.registry)
    }

    /// The declared entries plus those registered through the API. Stored entries were
    /// checked when written; one that no longer fits (a clash with a declared name, a rule
    /// that changed) is left out and reported.
    pub fn with_stored(
        declared: &Declared,
        identities: Vec<StoredIdentity>,
        credentials: Vec<StoredCredential>,
    ) -> (Self, Vec<BuildProblem>) {
        let mut build = StoredBuild::new(declared, &identities);
        for c in credentials {
            build.credential(c);
        }
        build.finish()
    }

    /// This registry with stored changes applied, sharing everything they leave alone.
    /// `None` when the result could differ from a whole build (an entry would be left
    /// out, or one left out before might now fit): build it whole then.
    pub fn apply(&self, declared: &Declared, changes: &[StoredChange]) -> Option<Registry> {
        if self.left_out > 0 {
            return None;
        }
        let mut next = self.clone();
        for change in changes {
            match change {
                StoredChange::Identity { name, now } => {
                    if next.identities.get(name).is_some_and(|i| i.read_only) {
                        return None;
                    }
                    next.remove_identity(name);
                    if let Some((row, credentials)) = now {
                        let identity = declared.stored_identity(row).ok()?;
                        if !matches!(next.insert_identity(identity.clone()), Inserted::Yes) {
                            return None;
                        }
                        for c in credentials {
                            let cred = declared.stored_credential(&identity, c).ok()?;
                            if !matches!(next.insert_credential(Arc::new(cred)), Inserted::Yes) {
                                return None;
                            }
                        }
                    }
                }
                StoredChange::Credential {
                    identity,
                    name,
                    now,
                } => {
                    next.remove_credential(identity, name);
                    if let Some(row) = now {
                        let owner = next.identities.get(identity)?.clone();
                        if owner.read_only {
                            return None;
                        }
                        let cred = declared.stored_credential(&owner, row).ok()?;
                        if !matches!(next.insert_credential(Arc::new(cred)), Inserted::Yes) {
                            return None;
                        }
                    }
                }
            }
        }
        Some(next)
    }
}

fn effective_authority_host(host: Option<&str>, cloud: Option<Cloud>, default: &str) -> String {
    host.map(str::to_owned)
        .or_else(|| cloud.map(|c| c.authority_host().to_owned()))
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The part of the registry declared in the config file, checked and built once at
/// start-up.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// The declared identities and credentials, indexed: every registry starts as a clone
    /// of it (which shares it), and stored entries are added to that.
    pub registry: Registry,
    pub default_authority_host: String,
    /// The authority hosts identities may use (docs/configuration.md).
    pub authority_hosts: AuthorityHosts,
}

impl Declared {
    /// Applies Entra's rules to every declared credential; every problem names its key.
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, Vec<BuildProblem>> {
        Self::build(cfg, None)
    }

    /// [`Declared::from_config`], taking the credentials out of `cfg` as it goes: each is
    /// dropped once built, so a large configuration and the registry built from it are
    /// never both held whole (docs/PERFORMANCE.md, "Scale").
    pub fn take_from_config(cfg: &mut BrokerConfig) -> Result<Self, Vec<BuildProblem>> {
        let taken = cfg
            .identities
            .iter_mut()
            .map(|i| std::mem::take(&mut i.federated_credentials))
            .collect();
        Self::build(cfg, Some(taken))
    }

    fn build(
        cfg: &BrokerConfig,
        taken: Option<Vec<Vec<FederatedCredentialConfig>>>,
    ) -> Result<Self, Vec<BuildProblem>> {
        let opts = RuleOptions {
            allow_loopback_http: cfg.outbound.allow_loopback_http,
        };
        let explicit_issuers: Vec<String> = cfg.issuers.iter().map(|i| i.url.clone()).collect();
        let mut registry = Registry::empty(&explicit_issuers);
        let mut problems = Vec::new();
        let mut taken = taken.map(Vec::into_iter);
        for (i, id) in cfg.identities.iter().enumerate() {
            let identity = Arc::new(Identity {
                name: id.name.clone(),
                tenant_id: id.tenant_id.to_string(),
                client_id: id.client_id.to_string(),
                authority_host: id
                    .effective_authority_host(&cfg.entra.authority_host)
                    .trim_end_matches('/')
                    .to_owned(),
                cloud: id.cloud,
                assertion: id.assertion,
                assertion_subject: id.assertion_subject.clone(),
                certificate: id.certificate_file.as_ref().map(|cert| {
                    let key = id.certificate_key_file.as_ref().unwrap_or(cert);
                    (cert.clone(), key.clone())
                }),
                read_only: true,
                created_at: None,
                updated_at: None,
                conditions: Conditions::new(Restrictions::of_identity(id), false).unwrap_or_else(
                    |v| {
                        problems.extend(config_problems(&format!("identities[{i}]"), &v));
                        Conditions::default()
                    },
                ),
            });
            if let Inserted::LeftOut(p) = registry.insert_identity(identity.clone()) {
                problems.push(p);
            }
            let owned = taken.as_mut().map(|t| t.next().unwrap_or_default());
            let list: Box<dyn Iterator<Item = std::borrow::Cow<'_, FederatedCredentialConfig>>> =
                match owned {
                    Some(owned) => Box::new(owned.into_iter().map(std::borrow::Cow::Owned)),
                    None => Box::new(
                        id.federated_credentials
                            .iter()
                            .map(std::borrow::Cow::Borrowed),
                    ),
                };
            // The audiences of a credential that names none: the same for all of them.
            let default_audiences =
                FederatedCredentialConfig::default().effective_audiences(id.cloud);
            for (j, fc) in list.enumerate() {
                // Written out only for a problem: a file may declare a million credentials.
                let key = || format!("identities[{i}].federated_credentials[{j}]");
                let audiences = if fc.audiences.is_empty() {
                    &default_audiences
                } else {
                    &fc.audiences
                };
                let spec = CredentialSpec {
                    name: &fc.name,
                    issuer: &fc.issuer,
                    subject: fc.subject.as_deref(),
                    claims_matching_expression: fc.claims_matching_expression.as_deref(),
                    audiences,
                    description: fc.description.as_deref(),
                };
                let violations = rules::check(&spec, &opts);
                if !violations.is_empty() {
                    let key = key();
                    problems.extend(violations.into_iter().map(|v| BuildProblem {
                        key: format!("{key}.{}", snake(v.field)),
                        message: v.message,
                    }));
                    continue;
                }
                let conditions =
                    Restrictions::of_credential(&fc).and_then(|r| Conditions::new(r, true));
                match (build_credential(&identity, &spec), conditions) {
                    (Ok(c), Ok(conditions)) => {
                        let cred = Arc::new(Credential {
                            conditions: shared_conditions(conditions),
                            ..c
                        });
                        if let Inserted::LeftOut(p) = registry.insert_credential(cred) {
                            problems.push(p);
                        }
                    }
                    (Err(message), _) => problems.push(BuildProblem {
                        key: key(),
                        message,
                    }),
                    (_, Err(v)) => problems.extend(config_problems(&key(), &v)),
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            registry,
            default_authority_host: cfg.entra.authority_host.trim_end_matches('/').to_owned(),
            authority_hosts: AuthorityHosts::from_config(cfg),
        })
    }
}

impl Declared {
    /// An identity registered through the API, as the registry holds it. A row written
    /// before the authority-host allow-list existed is left out, so nothing of it is ever
    /// sent to that host.
    pub fn stored_identity(&self, s: &StoredIdentity) -> Result<Arc<Identity>, BuildProblem> {
        let authority_host = effective_authority_host(
            s.authority_host.as_deref(),
            s.cloud,
            &self.default_authority_host,
        );
        if !self.authority_hosts.allows(&authority_host) {
            return Err(BuildProblem {
                key: format!("identity {}", s.name),
                message: format!(
                    "authority host {authority_host:?} is not allowed by this broker's config ([entra] allowed_authority_hosts); the identity is left out"
                ),
            });
        }
        let conditions = Conditions::new(s.restrictions.clone(), false)
            .map_err(|v| restriction_problem(format!("identity {}", s.name), &v))?;
        Ok(Arc::new(Identity {
            name: s.name.clone(),
            tenant_id: s.tenant_id.clone(),
            client_id: s.client_id.clone(),
            authority_host,
            cloud: s.cloud,
            assertion: s.assertion,
            assertion_subject: s.assertion_subject.clone(),
            certificate: None,
            read_only: false,
            created_at: Some(s.created_at),
            updated_at: Some(s.updated_at),
            conditions,
        }))
    }

    /// A credential registered through the API, of `identity`.
    pub fn stored_credential(
        &self,
        identity: &Arc<Identity>,
        c: &StoredCredential,
    ) -> Result<Credential, BuildProblem> {
        let spec = CredentialSpec {
            name: &c.name,
            issuer: &c.issuer,
            subject: c.subject.as_deref(),
            claims_matching_expression: c.claims_matching_expression.as_deref(),
            audiences: &c.audiences,
            description: c.description.as_deref(),
        };
        let mut cred = build_credential(identity, &spec).map_err(|message| BuildProblem {
            key: format!("identity {} credential {}", c.identity, c.name),
            message,
        })?;
        cred.id = c.id.as_str().into();
        cred.one_time_use = c.one_time_use;
        cred.created_at = Some(c.created_at);
        cred.updated_at = Some(c.updated_at);
        cred.conditions =
            shared_conditions(Conditions::new(c.restrictions.clone(), true).map_err(|v| {
                restriction_problem(format!("identity {} credential {}", c.identity, c.name), &v)
            })?);
        Ok(cred)
    }
}

impl Registry {
    /// Indexes identities and credentials. Duplicates are refused the way Entra refuses
    /// them: the first one stays, the later one is left out and reported.
    pub fn build(
        identities: Vec<Arc<Identity>>,
        credentials: Vec<Arc<Credential>>,
        explicit_issuers: &[String],
    ) -> (Self, Vec<BuildProblem>) {
        let mut registry = Registry::empty(explicit_issuers);
        let mut problems = Vec::new();
        for identity in identities {
            if let Inserted::LeftOut(p) = registry.insert_identity(identity) {
                problems.push(p);
            }
        }
        for cred in credentials {
            if let Inserted::LeftOut(p) = registry.insert_credential(cred) {
                problems.push(p);
            }
        }
        registry.left_out = problems.len();
        (registry, problems)
    }

    /// No entries; tokens of `explicit_issuers` are trusted.
    fn empty(explicit_issuers: &[String]) -> Self {
        let mut registry = Registry {
            explicit_issuers: Arc::new(explicit_issuers.iter().cloned().collect()),
            ..Default::default()
        };
        for issuer in explicit_issuers {
            registry
                .by_issuer
                .insert(Arc::from(issuer.as_str()), IssuerIndex::default());
        }
        registry
    }

    fn insert_identity(&mut self, identity: Arc<Identity>) -> Inserted {
        let left_out = |message: String| {
            Inserted::LeftOut(BuildProblem {
                key: format!("identity {}", identity.name),
                message,
            })
        };
        let lower = identity.name.to_lowercase();
        if self.lower_names.contains_key(&lower) {
            return left_out(
                "an identity with this name (compared without regard to case) already exists"
                    .into(),
            );
        }
        let subject = identity
            .assertion_subject
            .clone()
            .unwrap_or_else(|| identity.name.clone());
        let claimed_by = [identity.name.as_str(), subject.as_str()]
            .into_iter()
            .find_map(|c| self.claims.get(c).map(|owner| (c, owner)));
        if let Some((claimed, owner)) = claimed_by {
            return left_out(format!(
                "{claimed:?} is already the name or assertion subject of identity {owner:?}; a broker-assertion subject belongs to one identity"
            ));
        }
        let client_id = identity.client_id.to_ascii_lowercase();
        if self.client_ids.contains_key(&client_id) {
            return left_out(format!(
                "client_id {} is used by another identity",
                identity.client_id
            ));
        }
        self.client_ids.insert(client_id, identity.name.clone());
        self.claims
            .insert(identity.name.clone(), identity.name.clone());
        self.claims.insert(subject.clone(), identity.name.clone());
        self.assertion_subjects.insert(subject, identity.clone());
        self.lower_names.insert(lower, identity.name.clone());
        self.identities.insert(identity.name.clone(), identity);
        Inserted::Yes
    }

    fn insert_credential(&mut self, mut cred: Arc<Credential>) -> Inserted {
        // A credential of an identity that was left out goes with it.
        if !self
            .identities
            .get(&cred.identity.name)
            .is_some_and(|i| Arc::ptr_eq(i, &cred.identity))
        {
            return Inserted::Skipped;
        }
        let left_out = |message: String| {
            Inserted::LeftOut(BuildProblem {
                key: format!("identity {} credential {}", cred.identity.name, cred.name),
                message,
            })
        };
        let mine = self.credentials.get(&cred.identity.name);
        if mine.is_some_and(|m| m.contains_key(&*cred.name)) {
            return left_out("a credential with this name already exists on the identity".into());
        }
        if let SubjectRule::Exact(subject) = &cred.rule {
            let taken = self
                .by_issuer
                .get(&*cred.issuer)
                .and_then(|index| index.exact.get(&**subject))
                .is_some_and(|b| {
                    b.as_slice()
                        .iter()
                        .any(|c| c.identity.name == cred.identity.name)
                });
            if taken {
                return left_out(format!(
                    "issuer {} and subject {subject} are already used by another credential of this identity",
                    cred.issuer
                ));
            }
        }

        self.intern(&mut cred);
        self.by_issuer
            .entry(cred.issuer.clone())
            .or_default()
            .add(&cred);
        self.credentials
            .entry(cred.identity.name.clone())
            .or_default()
            .insert(cred.name.clone(), cred);
        self.credential_count += 1;
        Inserted::Yes
    }

    /// Makes a credential just built share the issuer and audience strings already in
    /// the registry (one allocation per distinct value however many credentials use it).
    fn intern(&mut self, cred: &mut Arc<Credential>) {
        let Some(c) = Arc::get_mut(cred) else { return };
        if let Some((issuer, _)) = self.by_issuer.get_key_value(&*c.issuer) {
            c.issuer = issuer.clone();
        }
        match self.audiences.get_key_value(&*c.audience) {
            Some((audience, _)) => c.audience = audience.clone(),
            None => {
                self.audiences.insert(c.audience.clone(), ());
            }
        }
    }

    fn remove_credential(&mut self, identity: &str, name: &str) {
        let Some(mine) = self.credentials.get_mut(identity) else {
            return;
        };
        let Some(cred) = mine.remove(name) else {
            return;
        };
        if mine.is_empty() {
            self.credentials.remove(identity);
        }
        self.credential_count -= 1;
        if let Some(index) = self.by_issuer.get_mut(&*cred.issuer) {
            index.remove(&cred);
            if index.len == 0 && !self.explicit_issuers.contains(&*cred.issuer) {
                self.by_issuer.remove(&*cred.issuer);
            }
        }
    }

    fn remove_identity(&mut self, name: &str) {
        let names: Vec<String> = self
            .credentials
            .get(name)
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        for cred in names {
            self.remove_credential(name, &cred);
        }
        let Some(identity) = self.identities.remove(name) else {
            return;
        };
        let subject = identity.assertion_subject.as_deref().unwrap_or(name);
        self.assertion_subjects.remove(subject);
        self.claims.remove(subject);
        self.claims.remove(name);
        self.client_ids
            .remove(&identity.client_id.to_ascii_lowercase());
        self.lower_names.remove(&name.to_lowercase());
    }

    /// True when tokens from `iss` are trusted at all (some credential or `[[issuers]]`
    /// names it). Nothing is fetched for any other issuer.
    pub fn knows_issuer(&self, iss: &str) -> bool {
        self.by_issuer.contains_key(iss)
    }

    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.identities.values()
    }

    pub fn identity(&self, name: &str) -> Option<&Arc<Identity>> {
        self.identities.get(name)
    }

    /// The identity whose name differs from `name` only in case, if any.
    pub fn identity_ignoring_case(&self, name: &str) -> Option<&Arc<Identity>> {
        self.lower_names
            .get(&name.to_lowercase())
            .and_then(|n| self.identities.get(n))
    }

    /// The identity whose broker-assertion subject is `subject`.
    pub fn assertion_subject_owner(&self, subject: &str) -> Option<&Arc<Identity>> {
        self.assertion_subjects.get(subject)
    }

    /// The identity whose name or broker-assertion subject is `value`.
    pub fn claimant(&self, value: &str) -> Option<&Arc<Identity>> {
        self.identities
            .get(value)
            .or_else(|| self.assertion_subjects.get(value))
    }

    /// Every credential, by identity then name.
    pub fn credentials(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.credentials.values().flat_map(|m| m.values())
    }

    /// The credentials of one identity, by name.
    pub fn credentials_of(&self, identity: &str) -> impl Iterator<Item = &Arc<Credential>> {
        self.credentials
            .get(identity)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// A credential of `identity` by name or id (a name wins over another one's id).
    pub fn credential(&self, identity: &str, name_or_id: &str) -> Option<&Arc<Credential>> {
        let mine = self.credentials.get(identity)?;
        mine.get(name_or_id)
            .or_else(|| mine.values().find(|c| &*c.id == name_or_id))
    }

    pub fn credential_count(&self) -> usize {
        self.credential_count
    }

    /// The credentials a verified token satisfies (issuer, subject or expression, audience).
    pub fn matching(&self, token: &VerifiedToken) -> Result<Vec<Arc<Credential>>, MatchError> {
        let Some(index) = self.by_issuer.get(token.iss.as_str()) else {
            return Err(MatchError::NoCredential);
        };
        let exact = token
            .sub
            .as_deref()
            .and_then(|sub| index.exact.get(sub))
            .map(Bucket::as_slice)
            .unwrap_or_default();
        let candidates = index.expression_candidates(token.sub.as_deref());
        let mut subject_matches =
            exact
                .iter()
                .chain(candidates.into_iter().filter(|c| match &c.rule {
                    SubjectRule::Expression(e) => e.matches(token.claims.value()),
                    SubjectRule::Exact(_) => false,
                }));
        let mut matched = Vec::new();
        let mut wanted_audience = None;
        for cred in subject_matches.by_ref() {
            if admits_audience(&token.aud, &cred.audience) {
                matched.push(cred.clone());
            } else if wanted_audience.is_none() {
                wanted_audience = Some(cred.audience.to_string());
            }
        }
        match (matched.is_empty(), wanted_audience) {
            (false, _) => Ok(matched),
            (true, Some(expected)) => Err(MatchError::Audience { expected }),
            (true, None) => Err(MatchError::NoCredential),
        }
    }
}

/// Whether a token with `aud` values `token_aud` is for a credential's `audience`: one of
/// them equals it, or it is `api://AzureADTokenExchange` and one is the token-exchange
/// app's id, as in Entra's own v2.0 tokens for that audience.
fn admits_audience(token_aud: &[String], audience: &str) -> bool {
    token_aud.iter().any(|a| {
        a == audience || (audience == rules::DEFAULT_AUDIENCE && a == rules::TOKEN_EXCHANGE_APP_ID)
    })
}

/// Why a credential did not admit a token, for `simulate`.
#[derive(Debug, Clone)]
pub struct Miss {
    pub credential: Arc<Credential>,
    /// `issuer`, `subject`, `expression` or `audience`.
    pub check: &'static str,
    /// For `expression`: the first clause that fails (1-based) and its text.
    pub clause: Option<(usize, String)>,
    pub detail: String,
}

/// Most near misses `explain` reports.
pub const MAX_MISSES: usize = 50;

impl Registry {
    /// Every credential the token satisfies, and near misses with the check each failed:
    /// same issuer but another subject, expression clause or audience, or an issuer that
    /// differs only in case or a trailing `/` (Entra compares issuers exactly).
    pub fn explain(&self, token: &VerifiedToken) -> (Vec<Arc<Credential>>, Vec<Miss>) {
        let mut matched = Vec::new();
        let mut misses = Vec::new();
        let loose = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
        for cred in self.credentials() {
            if *cred.issuer != *token.iss {
                if loose(&cred.issuer) == loose(&token.iss) {
                    misses.push(Miss {
                        credential: cred.clone(),
                        check: "issuer",
                        clause: None,
                        detail: format!(
                            "the token's iss {:?} differs from the credential's issuer {:?} only in case or a trailing '/'; issuers are compared exactly",
                            token.iss, cred.issuer
                        ),
                    });
                }
                continue;
            }
            let subject_miss = match &cred.rule {
                SubjectRule::Exact(subject) => match token.sub.as_deref() {
                    Some(sub) if sub == &**subject => None,
                    Some(sub) if sub.eq_ignore_ascii_case(subject) => Some((
                        "subject",
                        None,
                        format!(
                            "the token's sub {sub:?} differs from {subject:?} only in case; subjects are compared case-sensitively"
                        ),
                    )),
                    Some(sub) => Some((
                        "subject",
                        None,
                        format!("the token's sub {sub:?} is not {subject:?}"),
                    )),
                    None => Some(("subject", None, "the token has no sub claim".to_owned())),
                },
                SubjectRule::Expression(expression) => expression
                    .first_failure(token.claims.value())
                    .map(|(i, clause)| {
                        let path: Vec<&str> = clause.path.iter().map(String::as_str).collect();
                        let mut actual = token.claims.value();
                        for name in &path {
                            actual = actual.get(*name).unwrap_or(&serde_json::Value::Null);
                        }
                        let actual = match actual {
                            serde_json::Value::Null => "the claim is missing".to_owned(),
                            other => format!("the token has {other}"),
                        };
                        (
                            "expression",
                            Some((i + 1, clause.to_string())),
                            format!("clause {} does not hold: {actual}", i + 1),
                        )
                    }),
            };
            match subject_miss {
                Some((check, clause, detail)) => misses.push(Miss {
                    credential: cred.clone(),
                    check,
                    clause,
                    detail,
                }),
                None if admits_audience(&token.aud, &cred.audience) => matched.push(cred.clone()),
                None => misses.push(Miss {
                    credential: cred.clone(),
                    check: "audience",
                    clause: None,
                    detail: format!(
                        "the token's aud {:?} does not include {:?}",
                        token.aud, cred.audience
                    ),
                }),
            }
        }
        misses.truncate(MAX_MISSES);
        (matched, misses)
    }
}

/// Chooses the identity (docs/api.md, `identity`): the requested one if the token may act as it,
/// else the only one.
pub fn select_identity(
    matched: &[Arc<Credential>],
    requested: Option<&str>,
) -> Result<Arc<Identity>, SelectError> {
    let mut identities: Vec<&Arc<Identity>> = Vec::new();
    for cred in matched {
        if !identities.iter().any(|i| i.name == cred.identity.name) {
            identities.push(&cred.identity);
        }
    }
    match requested {
        Some(wanted) => identities
            .into_iter()
            .find(|i| i.name == wanted || i.client_id.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or(SelectError::NotAllowed),
        None => match identities.as_slice() {
            [only] => Ok((*only).clone()),
            [] => Err(SelectError::NotAllowed),
            many => Err(SelectError::Ambiguous(
                many.iter().map(|i| i.name.clone()).collect(),
            )),
        },
    }
}

/// Builds a credential from a spec that already passed [`rules::check`].
pub fn build_credential(
    identity: &Arc<Identity>,
    spec: &CredentialSpec<'_>,
) -> Result<Credential, String> {
    let rule = match (spec.subject, spec.claims_matching_expression) {
        (Some(subject), None) => SubjectRule::Exact(Arc::from(subject)),
        (None, Some(expr)) => SubjectRule::Expression(Box::new(
            Expression::parse(expr).map_err(|e| e.to_string())?,
        )),
        _ => {
            return Err("exactly one of subject and claims_matching_expression is required".into());
        }
    };
    let audience = spec
        .audiences
        .first()
        .map_or(rules::DEFAULT_AUDIENCE, String::as_str);
    Ok(Credential {
        id: format!("config:{}", spec.name).into_boxed_str(),
        name: Arc::from(spec.name),
        identity: identity.clone(),
        issuer: Arc::from(spec.issuer),
        rule,
        audience: Arc::from(audience),
        description: spec.description.map(Box::from),
        one_time_use: false,
        created_at: None,
        updated_at: None,
        conditions: unrestricted(),
    })
}

/// Restrictions a stored row holds that this version refuses (written by another).
fn restriction_problem(key: String, violations: &[super::conditions::Violation]) -> BuildProblem {
    BuildProblem {
        key,
        message: violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Restriction violations of a config entry, keyed like the config file.
fn config_problems(key: &str, violations: &[super::conditions::Violation]) -> Vec<BuildProblem> {
    violations
        .iter()
        .map(|v| BuildProblem {
            key: format!("{key}.{}", snake(v.field)),
            message: v.message.clone(),
        })
        .collect()
}

/// `claimsMatchingExpression` → `claims_matching_expression`, for config-file key paths.
fn snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(text: &str) -> Result<Registry, Vec<BuildProblem>> {
        let cfg = BrokerConfig::from_toml(text, "test").unwrap();
        Registry::from_config(&cfg)
    }

    #[test]
    fn every_example_config_builds_a_registry_under_entras_rules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let registry = load(&text).unwrap_or_else(|p| panic!("{}: {p:?}", path.display()));
                assert!(registry.identities().count() > 0, "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} examples found");
    }

    const BASE: &str = r#"
        [[identities]]
        name = "deploy"
        tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
        client_id = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c"
    "#;

    #[test]
    fn a_broker_assertion_subject_or_a_name_differing_in_case_is_refused_in_the_config() {
        let second = |name: &str, subject: &str| {
            format!(
                "[broker_issuer]
                url = \"https://wif.contoso.example\"
                {BASE}
                [[identities]]
                name = \"{name}\"
                tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"
                client_id = \"6d2f4e1a-7b3c-4d5e-8f9a-0b1c2d3e4f5a\"
                assertion = \"broker\"
                assertion_subject = \"{subject}\"
                "
            )
        };
        // `deploy`'s default subject is its name.
        let problems = load(&second("fleet", "deploy")).unwrap_err();
        assert!(
            problems[0].message.contains("assertion subject"),
            "{problems:?}"
        );
        let problems = load(&second("Deploy", "other")).unwrap_err();
        assert!(problems[0].message.contains("case"), "{problems:?}");
        let registry = load(&second("fleet", "fleet-production")).unwrap();
        assert_eq!(
            registry
                .assertion_subject_owner("fleet-production")
                .map(|i| i.client_id.as_str()),
            Some("6d2f4e1a-7b3c-4d5e-8f9a-0b1c2d3e4f5a")
        );
        assert_eq!(registry.claimant("deploy").unwrap().name, "deploy");
    }

    #[test]
    fn a_credential_breaking_entras_rules_is_named_by_its_key() {
        let text = format!(
            "{BASE}
            [[identities.federated_credentials]]
            name = \"bad name!\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            audiences = [\"a\", \"b\"]
            claims_matching_expression = \"claims['sub'] eq 'x'\"
            "
        );
        let problems = load(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].name"),
            "{problems:?}"
        );
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].audiences"),
            "{problems:?}"
        );
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].subject"),
            "{problems:?}"
        );
    }

    #[test]
    fn duplicate_issuer_and_subject_on_one_identity_is_refused() {
        let cred = "
            [[identities.federated_credentials]]
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            ";
        let text = format!(
            "{BASE}{}{}",
            cred.replace(
                "[[identities.federated_credentials]]",
                "[[identities.federated_credentials]]\nname = \"one\""
            ),
            cred.replace(
                "[[identities.federated_credentials]]",
                "[[identities.federated_credentials]]\nname = \"two\""
            )
        );
        let problems = load(&text).unwrap_err();
        assert!(problems[0].message.contains("already used"), "{problems:?}");
    }

    fn token(iss: &str, sub: &str, aud: &str, extra: serde_json::Value) -> VerifiedToken {
        let mut claims = json!({"iss": iss, "sub": sub, "aud": aud});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        VerifiedToken {
            iss: iss.into(),
            sub: Some(sub.into()),
            aud: vec![aud.into()],
            exp: 0,
            iat: None,
            jti: None,
            sha256: String::new(),
            replay_id: String::new(),
            claims: claims.into(),
        }
    }

    #[test]
    fn the_token_exchange_app_id_stands_for_the_exchange_audience_only() {
        let text = format!(
            "{BASE}
            [[identities.federated_credentials]]
            name = \"payments-mi\"
            issuer = \"https://login.microsoftonline.com/t/v2.0\"
            subject = \"object-id\"
            [[identities.federated_credentials]]
            name = \"custom\"
            issuer = \"https://login.microsoftonline.com/t/v2.0\"
            subject = \"other-object-id\"
            audiences = [\"api://custom\"]
            "
        );
        let registry = load(&text).unwrap();
        let iss = "https://login.microsoftonline.com/t/v2.0";
        let app_id = rules::TOKEN_EXCHANGE_APP_ID;
        let mi = token(iss, "object-id", app_id, json!({}));
        assert_eq!(
            registry.matching(&mi).unwrap()[0].name,
            "payments-mi".into()
        );
        assert_eq!(registry.explain(&mi).0[0].name, "payments-mi".into());
        // Only api://AzureADTokenExchange has an alias.
        let custom = token(iss, "other-object-id", app_id, json!({}));
        assert_eq!(
            registry.matching(&custom).unwrap_err(),
            MatchError::Audience {
                expected: "api://custom".into()
            }
        );
    }

    #[test]
    fn exact_subjects_and_expressions_match_with_the_right_audience_only() {
        let text = format!(
            "{BASE}
            [[identities.federated_credentials]]
            name = \"main\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            [[identities.federated_credentials]]
            name = \"releases\"
            issuer = \"https://token.actions.githubusercontent.com\"
            claims_matching_expression = \"claims['sub'] matches 'repo:c/r:ref:refs/heads/release/*' and claims['actor'] eq 'octocat'\"
            "
        );
        let registry = load(&text).unwrap();
        let gh = "https://token.actions.githubusercontent.com";
        let aud = "api://AzureADTokenExchange";
        let main = registry
            .matching(&token(gh, "repo:c/r:ref:refs/heads/main", aud, json!({})))
            .unwrap();
        assert_eq!(main[0].name, "main".into());
        let release = token(
            gh,
            "repo:c/r:ref:refs/heads/release/1.2",
            aud,
            json!({"actor": "octocat"}),
        );
        assert_eq!(
            registry.matching(&release).unwrap()[0].name,
            "releases".into()
        );
        let wrong_actor = token(
            gh,
            "repo:c/r:ref:refs/heads/release/1.2",
            aud,
            json!({"actor": "mallory"}),
        );
        assert_eq!(
            registry.matching(&wrong_actor).unwrap_err(),
            MatchError::NoCredential
        );
        let case = token(gh, "repo:c/r:ref:refs/heads/MAIN", aud, json!({}));
        assert_eq!(
            registry.matching(&case).unwrap_err(),
            MatchError::NoCredential
        );
        let other_aud = token(gh, "repo:c/r:ref:refs/heads/main", "api://other", json!({}));
        assert!(matches!(
            registry.matching(&other_aud),
            Err(MatchError::Audience { .. })
        ));
        assert!(!registry.knows_issuer("https://token.actions.githubusercontent.com/"));
    }

    /// The expression index is only a shortcut: for every token it must find exactly the
    /// credentials that evaluating every expression finds.
    #[test]
    fn the_expression_index_agrees_with_trying_every_expression() {
        let mut text = BASE.to_owned();
        let expressions = [
            "claims['sub'] matches 'repo:c/r:ref:refs/heads/*'",
            "claims['sub'] matches 'repo:c/r:*'",
            "claims['sub'] eq 'repo:c/r:ref:refs/heads/main'",
            "claims['sub'] matches 'repo:c/?:ref:*'",
            "claims['sub'] matches '*:environment:prod'",
            "claims['actor'] eq 'octocat'",
            "claims['sub'] matches 'repo:c/r:ref:refs/tags/v*' and claims['sub'] matches 'repo:c/*'",
            "claims['sub'] matches 'répo:ü/*'",
        ];
        for (i, e) in expressions.iter().enumerate() {
            text.push_str(&format!(
                "[[identities.federated_credentials]]\nname = \"e{i}x\"\n\
                 issuer = \"https://token.actions.githubusercontent.com\"\n\
                 claims_matching_expression = \"{e}\"\n"
            ));
        }
        let registry = load(&text).unwrap();
        let gh = "https://token.actions.githubusercontent.com";
        let aud = "api://AzureADTokenExchange";
        let subjects = [
            "repo:c/r:ref:refs/heads/main",
            "repo:c/r:ref:refs/heads/dev",
            "repo:c/r:ref:refs/tags/v1",
            "repo:c/x:ref:refs/heads/main",
            "repo:c/r:environment:prod",
            "repo:d/r:environment:prod",
            "répo:ü/app",
            "repo:c/r",
            "",
        ];
        for sub in subjects {
            for extra in [json!({}), json!({"actor": "octocat"})] {
                let t = token(gh, sub, aud, extra.clone());
                let mut indexed: Vec<String> = registry
                    .matching(&t)
                    .map(|m| m.iter().map(|c| c.name.to_string()).collect())
                    .unwrap_or_default();
                let mut every: Vec<String> = registry
                    .credentials()
                    .filter(|c| match &c.rule {
                        SubjectRule::Expression(e) => e.matches(t.claims.value()),
                        SubjectRule::Exact(s) => **s == *sub,
                    })
                    .map(|c| c.name.to_string())
                    .collect();
                indexed.sort();
                every.sort();
                assert_eq!(indexed, every, "sub {sub:?} with {extra}");
            }
        }
        // A `sub` that is not a string is still tried against every expression.
        let mut odd = token(
            gh,
            "x",
            aud,
            json!({"sub": ["repo:c/r:ref:refs/heads/main"]}),
        );
        odd.sub = None;
        let names: Vec<String> = registry
            .matching(&odd)
            .unwrap()
            .iter()
            .map(|c| c.name.to_string())
            .collect();
        assert!(names.contains(&"e0x".to_owned()), "{names:?}");
    }

    #[test]
    fn sovereign_clouds_get_their_authority_and_audience() {
        let text = "
            [[identities]]
            name = \"gov\"
            tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"
            client_id = \"3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c\"
            cloud = \"usgov\"
            [[identities.federated_credentials]]
            name = \"main\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
        ";
        let registry = load(text).unwrap();
        let gov = registry.identity("gov").unwrap();
        assert_eq!(gov.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            &*registry.credentials().next().unwrap().audience,
            "api://AzureADTokenExchangeUSGov"
        );
    }
}

/// [`Registry::apply`] must give exactly what a whole build gives, for any sequence of
/// writes a store accepts.
#[cfg(test)]
mod incremental {
    use super::*;

    /// Everything a registry holds, in a stable order.
    fn summary(r: &Registry) -> Vec<String> {
        let mut out: Vec<String> = r.identities().map(|i| format!("identity {i:?}")).collect();
        for c in r.credentials() {
            assert!(Arc::ptr_eq(
                r.identity(&c.identity.name).unwrap(),
                &c.identity
            ));
            out.push(format!(
                "credential {}/{} {} {} {:?} {} {:?} {:?}",
                c.identity.name,
                c.name,
                c.id,
                c.issuer,
                c.rule,
                c.audience,
                c.one_time_use,
                c.updated_at
            ));
        }
        let names = |list: &Bucket| -> Vec<String> {
            let mut v: Vec<String> = list
                .as_slice()
                .iter()
                .map(|c| format!("{}/{}", c.identity.name, c.name))
                .collect();
            v.sort();
            v
        };
        let mut issuers: Vec<String> = r
            .by_issuer
            .iter()
            .map(|(iss, index)| {
                let mut exact: Vec<String> = index
                    .exact
                    .iter()
                    .map(|(k, v)| format!("{k}={:?}", names(v)))
                    .collect();
                exact.sort();
                let mut prefixes: Vec<String> = index
                    .by_sub_prefix
                    .iter()
                    .map(|(k, v)| format!("{k}={:?}", names(v)))
                    .collect();
                prefixes.sort();
                let expressions: Vec<_> = index.expressions.keys().collect();
                format!(
                    "issuer {iss} {} {exact:?} {prefixes:?} {:?} {expressions:?}",
                    index.len, index.prefix_lengths
                )
            })
            .collect();
        issuers.sort();
        out.extend(issuers);
        let sorted = |m: &imbl::HashMap<String, String>| {
            let mut v: Vec<String> = m.iter().map(|(k, v)| format!("{k}->{v}")).collect();
            v.sort();
            v
        };
        out.push(format!("claims {:?}", sorted(&r.claims)));
        out.push(format!("lower {:?}", sorted(&r.lower_names)));
        out.push(format!("clients {:?}", sorted(&r.client_ids)));
        let mut subjects: Vec<String> = r
            .assertion_subjects
            .iter()
            .map(|(k, v)| format!("{k}->{}", v.name))
            .collect();
        subjects.sort();
        out.push(format!("subjects {subjects:?}"));
        out.push(format!(
            "count {} left out {}",
            r.credential_count, r.left_out
        ));
        out
    }

    /// A tiny deterministic generator (no dependency for a test).
    struct Lcg(u64);
    impl Lcg {
        fn pick(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    const ISSUERS: [&str; 3] = [
        "https://token.actions.githubusercontent.com",
        "https://explicit.example",
        "https://gitlab.example",
    ];

    #[test]
    fn applying_changes_one_by_one_equals_building_everything() {
        let cfg = BrokerConfig::from_toml(
            r#"
            [[issuers]]
            url = "https://explicit.example"
            [[identities]]
            name = "deploy"
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c"
            [[identities.federated_credentials]]
            name = "main"
            issuer = "https://token.actions.githubusercontent.com"
            subject = "repo:c/r:ref:refs/heads/main"
            "#,
            "test",
        )
        .unwrap();
        let declared = Declared::from_config(&cfg).unwrap();
        // Names include one differing from the declared identity only in case, and
        // assertion subjects that clash with names: entries a whole build leaves out.
        let names = ["a", "b", "c", "d", "e", "Deploy", "s1"];
        let subjects = [
            None,
            None,
            None,
            None,
            None,
            Some("s1"),
            Some("b"),
            Some("s2"),
        ];
        let mut identities: Vec<StoredIdentity> = Vec::new();
        let mut credentials: Vec<StoredCredential> = Vec::new();
        let (mut registry, _) = Registry::with_stored(&declared, Vec::new(), Vec::new());
        let (mut applied, mut rebuilt) = (0, 0);
        let mut rng = Lcg(7);
        for step in 0..3000u64 {
            let name = names[rng.pick(names.len())].to_owned();
            let change = match rng.pick(6) {
                0 | 1 => {
                    // Create or replace an identity, as the store accepts it.
                    let client = format!("00000000-0000-4000-8000-{:012}", rng.pick(6));
                    let clash = identities.iter().any(|i| {
                        i.name != name
                            && (i.name.eq_ignore_ascii_case(&name)
                                || i.client_id.eq_ignore_ascii_case(&client))
                    });
                    if clash {
                        continue;
                    }
                    let row = StoredIdentity {
                        name: name.clone(),
                        tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
                        client_id: client,
                        cloud: None,
                        authority_host: None,
                        assertion: AssertionSource::Passthrough,
                        assertion_subject: subjects[rng.pick(subjects.len())].map(str::to_owned),
                        created_at: 1,
                        updated_at: step,
                        restrictions: crate::policy::conditions::Restrictions {
                            disabled: rng.pick(4) == 0,
                            ..Default::default()
                        },
                    };
                    identities.retain(|i| i.name != name);
                    identities.push(row);
                    identities.sort_by(|a, b| a.name.cmp(&b.name));
                    StoredChange::Identity { name, now: None }
                }
                2 => {
                    identities.retain(|i| i.name != name);
                    credentials.retain(|c| c.identity != name);
                    StoredChange::Identity { name, now: None }
                }
                3 | 4 => {
                    if !identities.iter().any(|i| i.name == name) {
                        continue;
                    }
                    let cred = format!("c{}", rng.pick(4));
                    let issuer = ISSUERS[rng.pick(ISSUERS.len())].to_owned();
                    let (subject, expression) = match rng.pick(3) {
                        0 => (
                            Some(format!("repo:o/r:ref:refs/heads/b{}", rng.pick(3))),
                            None,
                        ),
                        1 => (
                            None,
                            Some(format!("claims['sub'] matches 'repo:o/r{}:*'", rng.pick(2))),
                        ),
                        _ => (None, Some("claims['actor'] eq 'octocat'".to_owned())),
                    };
                    let clash = credentials.iter().any(|c| {
                        c.identity == name
                            && c.name != cred
                            && subject.is_some()
                            && c.issuer == issuer
                            && c.subject == subject
                    });
                    if clash {
                        continue;
                    }
                    let id = credentials
                        .iter()
                        .find(|c| c.identity == name && c.name == cred)
                        .map_or_else(|| format!("id-{step}"), |c| c.id.clone());
                    credentials.retain(|c| !(c.identity == name && c.name == cred));
                    credentials.push(StoredCredential {
                        id,
                        identity: name.clone(),
                        name: cred.clone(),
                        issuer,
                        subject,
                        claims_matching_expression: expression,
                        audiences: vec!["api://AzureADTokenExchange".into()],
                        description: None,
                        one_time_use: rng.pick(2) == 0,
                        created_at: 1,
                        updated_at: step,
                        restrictions: crate::policy::conditions::Restrictions {
                            allowed_scopes: match rng.pick(3) {
                                0 => vec!["https://storage.azure.com/.default".into()],
                                _ => Vec::new(),
                            },
                            ..Default::default()
                        },
                    });
                    credentials.sort_by(|a, b| (&a.identity, &a.name).cmp(&(&b.identity, &b.name)));
                    StoredChange::Credential {
                        identity: name,
                        name: cred,
                        now: None,
                    }
                }
                _ => {
                    let cred = format!("c{}", rng.pick(4));
                    credentials.retain(|c| !(c.identity == name && c.name == cred));
                    StoredChange::Credential {
                        identity: name,
                        name: cred,
                        now: None,
                    }
                }
            };
            // The change carries its entry as stored now, as a reload reads it.
            let change = match change {
                StoredChange::Identity { name, .. } => {
                    let now = identities.iter().find(|i| i.name == name).map(|i| {
                        let mine = credentials
                            .iter()
                            .filter(|c| c.identity == name)
                            .cloned()
                            .collect();
                        (i.clone(), mine)
                    });
                    StoredChange::Identity { name, now }
                }
                StoredChange::Credential { identity, name, .. } => {
                    let now = credentials
                        .iter()
                        .find(|c| c.identity == identity && c.name == name)
                        .cloned();
                    StoredChange::Credential {
                        identity,
                        name,
                        now,
                    }
                }
            };
            let (whole, _) =
                Registry::with_stored(&declared, identities.clone(), credentials.clone());
            match registry.apply(&declared, std::slice::from_ref(&change)) {
                Some(next) => {
                    assert_eq!(summary(&next), summary(&whole), "step {step}: {change:?}");
                    applied += 1;
                    registry = next;
                }
                None => {
                    rebuilt += 1;
                    registry = whole;
                }
            }
        }
        // Both paths are taken: writes applied one by one, and rebuilds while a clash
        // leaves an entry out.
        assert!(applied > 300, "applied {applied}, rebuilt {rebuilt}");
        assert!(rebuilt > 10, "applied {applied}, rebuilt {rebuilt}");
    }
}
