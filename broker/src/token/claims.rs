//! Reading a token's header and payload in one strict pass (docs/api.md, "Claims the broker
//! checks"): the members the broker checks by name are read typed, borrowed from the decoded
//! bytes (copied only when they hold escapes); the whole payload becomes a
//! `serde_json::Value` only when something needs arbitrary claims (a
//! `claims_matching_expression`, `simulate`, the admin API's OIDC roles), parsed then from
//! the same bytes ([`Claims::value`]).
//!
//! An object naming a member twice, at any depth, is refused: JSON parsers disagree on which
//! duplicate wins (serde_json's `Value` keeps the last), and the issuer may have meant the
//! other one (docs/security.md, "Duplicate JSON members"). With duplicates refused, the
//! typed read and the value parsed later from the same bytes by the same parser cannot
//! disagree. Names are compared after unescaping: `"s\u0075b"` is `sub`.
//!
//! This is a visitor rather than `#[derive(Deserialize)]`: a derive ignores unknown members
//! unchecked, and the refusal must cover every member, the ones only an expression reads too.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The payload of a token: its bytes, and the JSON value they hold once asked for.
#[derive(Clone)]
pub struct Claims {
    /// The decoded payload, a JSON object already read strictly (empty when the claims were
    /// given as a value, in `simulate` and tests).
    payload: Vec<u8>,
    value: OnceLock<Value>,
}

impl Claims {
    fn new(payload: Vec<u8>) -> Self {
        Self {
            payload,
            value: OnceLock::new(),
        }
    }

    /// The whole payload, a JSON object, parsed on first use and kept.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            match serde_json::from_slice::<Value>(&self.payload) {
                Ok(object @ Value::Object(_)) => object,
                // Not reached: the bytes were read as a JSON object by the same parser. An
                // object without claims matches no expression (every clause needs its claim).
                _ => Value::Object(Map::new()),
            }
        })
    }

    /// Whether [`Self::value`] has been built.
    pub fn is_parsed(&self) -> bool {
        self.value.get().is_some()
    }
}

impl From<Value> for Claims {
    /// Claims given as a value (`simulate`, tests): nothing to parse.
    fn from(value: Value) -> Self {
        Self {
            payload: Vec::new(),
            value: OnceLock::from(value),
        }
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Claims").field(self.value()).finish()
    }
}

/// A NumericDate claim as read (a non-negative integer; a fraction is truncated, as RFC 7519
/// allows), judged only after the signature verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numeric {
    #[default]
    Absent,
    Valid(u64),
    /// Present, but a string, a negative number or anything else.
    Invalid,
}

/// The registered claims besides `iss`, read but not yet judged (`token::verify` judges
/// them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registered {
    /// A string, else `None`.
    pub sub: Option<String>,
    /// A string, else `None`.
    pub jti: Option<String>,
    /// A non-empty string, or a non-empty array of strings; `None` when absent or anything
    /// else.
    pub aud: Option<Vec<String>>,
    pub exp: Numeric,
    pub nbf: Numeric,
    pub iat: Numeric,
}

/// Why a header or payload was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problem {
    /// An object names a member twice.
    Duplicate,
    /// Not JSON, or not an object.
    Invalid,
}

/// The header members the broker reads.
pub(super) struct Header {
    /// A string, else `None`.
    pub alg: Option<String>,
    /// A string, else `None`.
    pub kid: Option<String>,
    /// Whether `crit` is present, whatever its value.
    pub crit: bool,
}

/// The payload, read: `iss` (a non-empty string, else `None`), the other registered claims,
/// and the bytes for [`Claims::value`].
pub(super) struct Payload {
    pub iss: Option<String>,
    pub registered: Registered,
    pub claims: Claims,
}

pub(super) fn read_header(bytes: &[u8]) -> Result<Header, Problem> {
    let read: HeaderRead<'_> = strict(bytes)?;
    Ok(Header {
        alg: read.alg.map(Cow::into_owned),
        kid: read.kid.map(Cow::into_owned),
        crit: read.crit,
    })
}

pub(super) fn read_payload(bytes: Vec<u8>) -> Result<Payload, Problem> {
    let read: PayloadRead<'_> = strict(&bytes)?;
    let owned =
        |v: Vec<Cow<'_, str>>| -> Vec<String> { v.into_iter().map(Cow::into_owned).collect() };
    let iss = match read.iss {
        Some(Member::Text(s)) if !s.is_empty() => Some(s.into_owned()),
        _ => None,
    };
    let text = |m: Option<Member<'_>>| match m {
        Some(Member::Text(s)) => Some(s.into_owned()),
        _ => None,
    };
    let registered = Registered {
        sub: text(read.sub),
        jti: text(read.jti),
        aud: match read.aud {
            Some(Member::Text(s)) if !s.is_empty() => Some(vec![s.into_owned()]),
            Some(Member::Texts(items)) if !items.is_empty() => Some(owned(items)),
            _ => None,
        },
        exp: numeric(read.exp),
        nbf: numeric(read.nbf),
        iat: numeric(read.iat),
    };
    Ok(Payload {
        iss,
        registered,
        claims: Claims::new(bytes),
    })
}

fn numeric(member: Option<Member<'_>>) -> Numeric {
    match member {
        None => Numeric::Absent,
        Some(Member::Number(Some(n))) => Numeric::Valid(n),
        Some(_) => Numeric::Invalid,
    }
}

const DUPLICATE: &str = "duplicate member";

/// Reads `bytes` as one JSON value (nothing after it), refusing a member named twice.
fn strict<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = T::deserialize(&mut de).and_then(|read| de.end().map(|()| read));
    match read {
        Ok(read) => Ok(read),
        // No name in the message: the caller reports a fixed text.
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(Problem::Duplicate),
        Err(_) => Err(Problem::Invalid),
    }
}

/// The member names of one object so far: a few compared one by one, more in a set, so an
/// object of thousands of members costs no more than a `serde_json::Map` would.
enum Names<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(BTreeSet<Cow<'de, str>>),
}

impl<'de> Names<'de> {
    const FEW: usize = 32;

    fn new() -> Self {
        Self::Few(Vec::new())
    }

    /// Adds `name`; an error when the object named it already.
    fn insert<E: de::Error>(&mut self, name: Cow<'de, str>) -> Result<(), E> {
        let new = match self {
            Self::Few(names) if names.contains(&name) => false,
            Self::Few(names) if names.len() < Self::FEW => {
                if names.capacity() == 0 {
                    names.reserve_exact(Self::FEW);
                }
                names.push(name);
                true
            }
            Self::Few(names) => {
                let mut set: BTreeSet<_> = names.drain(..).collect();
                set.insert(name);
                *self = Self::Many(set);
                true
            }
            Self::Many(set) => set.insert(name),
        };
        if new {
            Ok(())
        } else {
            Err(de::Error::custom(DUPLICATE))
        }
    }
}

/// A member name, borrowed from the bytes unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Any JSON value, read only to refuse a member named twice inside it.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_none<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut names = Names::new();
        while let Some(Name(name)) = map.next_key()? {
            names.insert(name)?;
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// The value of a member the broker reads by name, as far as it reads it.
enum Member<'de> {
    Text(Cow<'de, str>),
    /// A number as a NumericDate: `None` when it is not a non-negative one. The same rule as
    /// on a `serde_json::Number`: an unsigned integer as it is, a finite non-negative float
    /// truncated (one beyond `u64` saturates), a negative one refused.
    Number(Option<u64>),
    /// An array whose elements are all strings.
    Texts(Vec<Cow<'de, str>>),
    /// Anything else (checked like any value).
    Other,
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Member<'de>, E> {
        Ok(Member::Number(u64::try_from(v).ok()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Member<'de>, E> {
        Ok(Member::Number(Some(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Member<'de>, E> {
        // `as` truncates the fraction and saturates beyond `u64::MAX`.
        Ok(Member::Number(
            (v >= 0.0 && v.is_finite()).then_some(v as u64),
        ))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_none<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        let mut texts = Some(Vec::new());
        // Every element is read, the rest checked, even once one is not a string.
        while let Some(item) = seq.next_element::<Member<'de>>()? {
            match (item, &mut texts) {
                (Member::Text(s), Some(texts)) => texts.push(s),
                _ => texts = None,
            }
        }
        Ok(texts.map_or(Member::Other, Member::Texts))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        CheckedVisitor.visit_map(map).map(|Checked| Member::Other)
    }
}

/// Reads a JSON object into `Fields`; anything else is refused after being checked, so a
/// member named twice inside it is reported as such, as for an object.
trait Fields<'de>: Default {
    /// Takes the member `name`'s value when it is one the broker reads; `false` when not.
    fn take<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error>;
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

fn object<'de, D: Deserializer<'de>, T: Fields<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_any(ObjectVisitor(std::marker::PhantomData))
}

impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut names = Names::new();
        let mut fields = T::default();
        while let Some(Name(name)) = map.next_key()? {
            // Borrowed, the copy is free; only a name with escapes is copied.
            names.insert(name.clone())?;
            if !fields.take(&name, &mut map)? {
                map.next_value::<Checked>()?;
            }
        }
        Ok(fields)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        CheckedVisitor.visit_seq(seq)?;
        Err(de::Error::invalid_type(de::Unexpected::Seq, &self))
    }
}

#[derive(Default)]
struct HeaderRead<'de> {
    alg: Option<Cow<'de, str>>,
    kid: Option<Cow<'de, str>>,
    crit: bool,
}

impl<'de> Fields<'de> for HeaderRead<'de> {
    fn take<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        let text = |m: Member<'de>| match m {
            Member::Text(s) => Some(s),
            _ => None,
        };
        match name {
            "alg" => self.alg = text(map.next_value()?),
            "kid" => self.kid = text(map.next_value()?),
            "crit" => {
                map.next_value::<Checked>()?;
                self.crit = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for HeaderRead<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer)
    }
}

#[derive(Default)]
struct PayloadRead<'de> {
    iss: Option<Member<'de>>,
    sub: Option<Member<'de>>,
    jti: Option<Member<'de>>,
    aud: Option<Member<'de>>,
    exp: Option<Member<'de>>,
    nbf: Option<Member<'de>>,
    iat: Option<Member<'de>>,
}

impl<'de> Fields<'de> for PayloadRead<'de> {
    fn take<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        let slot = match name {
            "iss" => &mut self.iss,
            "sub" => &mut self.sub,
            "jti" => &mut self.jti,
            "aud" => &mut self.aud,
            "exp" => &mut self.exp,
            "nbf" => &mut self.nbf,
            "iat" => &mut self.iat,
            _ => return Ok(false),
        };
        *slot = Some(map.next_value()?);
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for PayloadRead<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer)
    }
}
