//! The Flexible FIC expression language ("FFL", `languageVersion` 1): parsed once, when a
//! credential is loaded, into a typed [`Expression`] that every exchange then evaluates
//! against the claims of a verified token.
//!
//! # Grammar
//!
//! ```text
//! expression = clause *( " and " clause )
//! clause     = "claims" 1*( "[" quoted "]" ) " " op " " quoted
//! op         = "eq" / "matches"
//! quoted     = "'" *( any character but "'" / "''" ) "'"
//! ```
//!
//! - Parts are separated by exactly one space, as Entra requires. Tabs, runs of spaces,
//!   leading or trailing whitespace, unknown operators (`or`, `ne`, `==`, ...), upper-case
//!   keywords, unterminated quotes, empty claim names and trailing text are errors.
//! - Inside quotes every character stands for itself except the quote, which is doubled:
//!   `'it''s'` is the value `it's`.
//! - More than one `[...]` reaches into nested claims, for example
//!   `claims['kubernetes.io']['namespace']`. This is a broker extension: Entra knows only
//!   top-level claims.
//! - Limits: at most [`MAX_EXPRESSION_CHARS`] characters and [`MAX_CLAUSES`] clauses.
//!   Credential rules (`super::rules`) apply Entra's stricter 600-character field limit.
//! - Errors say where (the position in Unicode characters, counting from 1) and what was
//!   expected:
//!
//! ```text
//! at character 17: expected `eq` or `matches`, found `equals`; FFL has only the operators `eq`, `matches` and `and`
//! ```
//!
//! # Matching
//!
//! An expression holds when every clause holds. For one clause:
//! - the path is followed through JSON objects; a claim that is missing (or `null`, or
//!   reached through something that is not an object) never matches;
//! - a string claim is compared directly; a number or boolean is compared by its JSON text
//!   (`true`, `42`, `1.5` as `serde_json` writes it); an array matches if any of its
//!   string, number or boolean elements matches; objects (and arrays inside arrays) never
//!   match;
//! - `eq` is exact and case-sensitive;
//! - `matches` is a wildcard match: `*` matches any run of characters (including none, and
//!   including `/` and `:`), `?` exactly one character (a Unicode scalar value), every
//!   other character only itself, case-sensitively. There is no escape: a literal `*` or
//!   `?` can only be matched by the wildcard itself.
//!
//! # Cost
//!
//! Matching is on the hot path (one exchange may evaluate thousands of expressions), so
//! `matches` patterns are split at `*` when parsed. Evaluation is the greedy-star
//! algorithm on those segments: the first segment must match at the start, the last at the
//! end, and each one in between at its leftmost occurrence after the previous one. Taking
//! the leftmost occurrence is always safe because a `*` follows it, so nothing is ever
//! retried: worst case O(n·m), linear for the usual prefix patterns, and no allocation
//! except for number claims.
//!
//! This module never panics on any input and looks at nothing but the claims it is given.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde_json::Value;

/// The longest expression text accepted, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 2048;
/// The most clauses one expression may have.
pub const MAX_CLAUSES: usize = 50;

/// Keywords shown when an unknown operator is found.
const LANGUAGE_HINT: &str = "FFL has only the operators `eq`, `matches` and `and`";

/// A parsed expression: one or more clauses joined by `and`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    clauses: Vec<Clause>,
    /// One per clause, in the same order; derived from `clauses`.
    tests: Vec<Test>,
}

/// One `claims[...] op 'value'` clause.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clause {
    /// Claim names from the top level down: `["sub"]`, `["kubernetes.io", "namespace"]`.
    pub path: Vec<String>,
    pub op: Op,
    /// The value with quotes removed and doubled quotes undone.
    pub value: String,
}

/// A clause operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Exact, case-sensitive equality.
    Eq,
    /// Wildcard match: `*` any run of characters, `?` exactly one.
    Matches,
}

/// Why an expression does not parse. Positions count Unicode characters from 1.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FflError {
    #[error("the expression is empty; write at least one clause, e.g. claims['sub'] eq '...'")]
    Empty,
    #[error("the expression is {len} characters long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("at character {at}: too many clauses; at most {max} are allowed")]
    TooManyClauses { at: usize, max: usize },
    #[error("at character {at}: expected {expected}, found {found}")]
    Expected {
        at: usize,
        expected: &'static str,
        found: String,
    },
    #[error("at character {at}: expected {expected}, found {found}; {LANGUAGE_HINT}")]
    UnknownOperator {
        at: usize,
        expected: &'static str,
        found: String,
    },
    #[error("at character {at}: expected {expected}, found {found}; keywords are lower-case")]
    KeywordCase {
        at: usize,
        expected: &'static str,
        found: String,
    },
    #[error(
        "at character {at}: expected a single space, found {found}; \
         the parts of a clause and `and` are separated by exactly one space"
    )]
    Whitespace { at: usize, found: String },
    #[error("at character {at}: whitespace after the last clause")]
    TrailingWhitespace { at: usize },
    #[error(
        "at character {at}: the quoted {what} starting here is never closed \
         (a quote inside it is written twice: '')"
    )]
    UnterminatedQuote { at: usize, what: &'static str },
    #[error("at character {at}: the claim name is empty")]
    EmptyClaimName { at: usize },
}

impl FflError {
    /// Where the problem is (characters from 1), when it is at one place.
    pub fn position(&self) -> Option<usize> {
        match self {
            FflError::Empty | FflError::TooLong { .. } => None,
            FflError::TooManyClauses { at, .. }
            | FflError::Expected { at, .. }
            | FflError::UnknownOperator { at, .. }
            | FflError::KeywordCase { at, .. }
            | FflError::Whitespace { at, .. }
            | FflError::TrailingWhitespace { at }
            | FflError::UnterminatedQuote { at, .. }
            | FflError::EmptyClaimName { at } => Some(*at),
        }
    }
}

impl Expression {
    /// Parses expression text; see the module documentation for the grammar and limits.
    pub fn parse(text: &str) -> Result<Expression, FflError> {
        if text.chars().all(char::is_whitespace) {
            return Err(FflError::Empty);
        }
        let len = text.chars().count();
        if len > MAX_EXPRESSION_CHARS {
            return Err(FflError::TooLong {
                len,
                max: MAX_EXPRESSION_CHARS,
            });
        }
        let mut parser = Parser {
            chars: text.chars().collect(),
            pos: 0,
        };
        let mut clauses = Vec::new();
        loop {
            if clauses.len() == MAX_CLAUSES {
                return Err(FflError::TooManyClauses {
                    at: parser.at(),
                    max: MAX_CLAUSES,
                });
            }
            clauses.push(parser.clause()?);
            if parser.peek().is_none() {
                break;
            }
            parser.connector()?;
        }
        let tests = clauses.iter().map(Test::new).collect();
        Ok(Expression { clauses, tests })
    }

    /// The clauses, in the order written.
    /// A literal that the `sub` claim of every token this expression admits starts with,
    /// when one of its clauses fixes one (`claims['sub'] eq 'x'` fixes all of `x`;
    /// `matches 'repo:o/r:*'` fixes `repo:o/r:`). The longest such literal, for indexing;
    /// `None` when no clause constrains `sub` by a non-empty literal start.
    pub fn sub_prefix(&self) -> Option<&str> {
        self.clauses
            .iter()
            .filter(|c| c.path.len() == 1 && c.path[0] == "sub")
            .map(|c| match c.op {
                Op::Eq => c.value.as_str(),
                Op::Matches => {
                    let end = c.value.find(['*', '?']).unwrap_or(c.value.len());
                    &c.value[..end]
                }
            })
            .filter(|p| !p.is_empty())
            .max_by_key(|p| p.len())
    }

    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// Whether every clause holds for these claims (the token's payload object).
    pub fn matches(&self, claims: &Value) -> bool {
        self.first_failure(claims).is_none()
    }

    /// The first clause that does not hold, with its index: the answer to "why was I
    /// denied". `None` when the whole expression holds.
    pub fn first_failure(&self, claims: &Value) -> Option<(usize, &Clause)> {
        self.clauses
            .iter()
            .zip(&self.tests)
            .enumerate()
            .find(|(_, (clause, test))| !clause_holds(clause, test, claims))
            .map(|(index, (clause, _))| (index, clause))
    }

    /// The top-level claim names the expression reads, each once, in order of first use.
    pub fn claim_names(&self) -> impl Iterator<Item = &str> {
        self.clauses
            .iter()
            .enumerate()
            .filter_map(move |(index, clause)| {
                let name = clause.path.first()?.as_str();
                let seen = self
                    .clauses
                    .iter()
                    .take(index)
                    .any(|earlier| earlier.path.first().is_some_and(|n| n == name));
                (!seen).then_some(name)
            })
    }
}

impl FromStr for Expression {
    type Err = FflError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Expression::parse(text)
    }
}

impl Op {
    /// The keyword as written in expressions.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Matches => "matches",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Canonical text: `claims['a']['b'] matches 'x''y'`.
impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("claims")?;
        for name in &self.path {
            f.write_char('[')?;
            write_quoted(f, name)?;
            f.write_char(']')?;
        }
        write!(f, " {} ", self.op)?;
        write_quoted(f, &self.value)
    }
}

/// Canonical text: the clauses joined by ` and `. Parsing it gives the same expression.
impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, clause) in self.clauses.iter().enumerate() {
            if index > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{clause}")?;
        }
        Ok(())
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('\'')?;
    for c in text.chars() {
        if c == '\'' {
            f.write_str("''")?;
        } else {
            f.write_char(c)?;
        }
    }
    f.write_char('\'')
}

// ---------------------------------------------------------------------------------------
// Evaluation

/// The compiled form of one clause's comparison.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// `eq`: compare with the clause's value.
    Equal,
    /// `matches`: the value pre-split at `*`.
    Wildcard(Pattern),
}

impl Test {
    fn new(clause: &Clause) -> Test {
        match clause.op {
            Op::Eq => Test::Equal,
            Op::Matches => Test::Wildcard(Pattern::new(&clause.value)),
        }
    }

    fn check(&self, claim: &str, value: &str) -> bool {
        match self {
            Test::Equal => claim == value,
            Test::Wildcard(pattern) => pattern.matches(claim),
        }
    }
}

fn clause_holds(clause: &Clause, test: &Test, claims: &Value) -> bool {
    let mut current = claims;
    for name in &clause.path {
        // `get` answers `None` for anything that is not an object.
        match current.get(name.as_str()) {
            Some(next) => current = next,
            None => return false,
        }
    }
    match current {
        Value::Array(items) => items
            .iter()
            .any(|item| scalar_holds(item, test, &clause.value)),
        other => scalar_holds(other, test, &clause.value),
    }
}

fn scalar_holds(claim: &Value, test: &Test, value: &str) -> bool {
    match claim {
        Value::String(s) => test.check(s, value),
        Value::Bool(true) => test.check("true", value),
        Value::Bool(false) => test.check("false", value),
        Value::Number(n) => test.check(&n.to_string(), value),
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// A `matches` pattern split at `*`.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// No `*`: the whole claim must match this one segment.
    Whole(Segment),
    /// At least one `*`: `head * middle[0] * ... * tail`. Empty middle segments (from
    /// `**`) are dropped; `head` and `tail` may be empty.
    Star {
        head: Segment,
        middle: Vec<Segment>,
        tail: Segment,
    },
}

/// Text between stars: literal runs and runs of `?`. Matches a fixed number of characters.
#[derive(Debug, Clone, PartialEq, Default)]
struct Segment {
    atoms: Vec<Atom>,
    /// How many characters the segment matches.
    chars: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Literal(String),
    /// `n` consecutive `?`.
    AnyChars(usize),
}

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        let mut parts = pattern.split('*').map(Segment::new);
        let head = parts.next().unwrap_or_default();
        let mut rest: Vec<Segment> = parts.collect();
        match rest.pop() {
            None => Pattern::Whole(head),
            Some(tail) => Pattern::Star {
                head,
                middle: rest.into_iter().filter(|s| !s.atoms.is_empty()).collect(),
                tail,
            },
        }
    }

    fn matches(&self, claim: &str) -> bool {
        match self {
            Pattern::Whole(segment) => segment.match_at(claim, 0) == Some(claim.len()),
            Pattern::Star { head, middle, tail } => {
                let Some(mut pos) = head.match_at(claim, 0) else {
                    return false;
                };
                for segment in middle {
                    match segment.find(claim, pos) {
                        Some(end) => pos = end,
                        None => return false,
                    }
                }
                tail.match_end(claim, pos)
            }
        }
    }
}

impl Segment {
    fn new(text: &str) -> Segment {
        let mut atoms = Vec::new();
        let mut literal = String::new();
        let mut chars = 0;
        for c in text.chars() {
            chars += 1;
            if c != '?' {
                literal.push(c);
                continue;
            }
            if !literal.is_empty() {
                atoms.push(Atom::Literal(std::mem::take(&mut literal)));
            }
            match atoms.last_mut() {
                Some(Atom::AnyChars(n)) => *n += 1,
                _ => atoms.push(Atom::AnyChars(1)),
            }
        }
        if !literal.is_empty() {
            atoms.push(Atom::Literal(literal));
        }
        Segment { atoms, chars }
    }

    /// Matches the segment at byte offset `at` of `s`; answers where the match ends.
    fn match_at(&self, s: &str, at: usize) -> Option<usize> {
        let mut pos = at;
        for atom in &self.atoms {
            let rest = s.get(pos..)?;
            match atom {
                Atom::Literal(literal) => {
                    if !rest.starts_with(literal.as_str()) {
                        return None;
                    }
                    pos += literal.len();
                }
                Atom::AnyChars(n) => {
                    let mut chars = rest.chars();
                    for _ in 0..*n {
                        pos += chars.next()?.len_utf8();
                    }
                }
            }
        }
        Some(pos)
    }

    /// The leftmost match starting at or after byte offset `from`; answers where it ends.
    fn find(&self, s: &str, from: usize) -> Option<usize> {
        match self.atoms.first() {
            None => Some(from),
            Some(Atom::Literal(literal)) => {
                let mut start = from;
                loop {
                    let candidate = start + s.get(start..)?.find(literal.as_str())?;
                    if let Some(end) = self.match_at(s, candidate) {
                        return Some(end);
                    }
                    start = candidate + s.get(candidate..)?.chars().next()?.len_utf8();
                }
            }
            Some(Atom::AnyChars(_)) => {
                let rest = s.get(from..)?;
                rest.char_indices()
                    .find_map(|(offset, _)| self.match_at(s, from + offset))
            }
        }
    }

    /// Whether the segment matches the end of `s` without reaching before byte `from`.
    fn match_end(&self, s: &str, from: usize) -> bool {
        // The segment matches exactly `chars` characters, so it can start only there.
        let start = match self.chars.checked_sub(1) {
            None => s.len(),
            Some(back) => match s.char_indices().nth_back(back) {
                Some((offset, _)) => offset,
                None => return false,
            },
        };
        start >= from && self.match_at(s, start) == Some(s.len())
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

struct Parser {
    chars: Vec<char>,
    /// Index into `chars`.
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_next(&self) -> Option<char> {
        self.chars.get(self.pos + 1).copied()
    }

    /// The cursor as a position for messages (from 1).
    fn at(&self) -> usize {
        self.pos + 1
    }

    fn clause(&mut self) -> Result<Clause, FflError> {
        if self.token() != "claims" {
            return Err(self.expected("`claims`"));
        }
        self.pos += "claims".len();
        let mut path = Vec::new();
        loop {
            if self.peek() != Some('[') {
                if path.is_empty() {
                    return Err(self.expected("`[`"));
                }
                break;
            }
            self.pos += 1;
            if self.peek() != Some('\'') {
                return Err(self.expected("a claim name in single quotes"));
            }
            let start = self.at();
            let name = self.quoted("claim name")?;
            if name.is_empty() {
                return Err(FflError::EmptyClaimName { at: start });
            }
            path.push(name);
            if self.peek() != Some(']') {
                return Err(self.expected("`]`"));
            }
            self.pos += 1;
        }
        self.space()?;
        let op = match self.token().as_str() {
            "eq" => Op::Eq,
            "matches" => Op::Matches,
            _ => return Err(self.bad_keyword("`eq` or `matches`")),
        };
        self.pos += op.as_str().len();
        self.space()?;
        if self.peek() != Some('\'') {
            return Err(self.expected("a value in single quotes"));
        }
        let value = self.quoted("value")?;
        Ok(Clause { path, op, value })
    }

    /// ` and ` between two clauses.
    fn connector(&mut self) -> Result<(), FflError> {
        let rest = self.chars.get(self.pos..).unwrap_or_default();
        if rest.iter().all(|c| c.is_whitespace()) {
            return Err(FflError::TrailingWhitespace { at: self.at() });
        }
        if !self.peek().is_some_and(char::is_whitespace) {
            return Err(self.expected("` and ` or the end of the expression"));
        }
        self.space()?;
        if self.token() != "and" {
            return Err(self.bad_keyword("`and`"));
        }
        self.pos += "and".len();
        self.space()
    }

    /// Exactly one space.
    fn space(&mut self) -> Result<(), FflError> {
        match self.peek() {
            Some(' ') if !self.peek_next().is_some_and(char::is_whitespace) => {
                self.pos += 1;
                Ok(())
            }
            Some(c) if c.is_whitespace() => {
                let run: Vec<char> = self.chars[self.pos..]
                    .iter()
                    .copied()
                    .take_while(|c| c.is_whitespace())
                    .collect();
                let found = if run.len() == 1 {
                    describe_char(c)
                } else if run.iter().all(|&c| c == ' ') {
                    format!("{} spaces", run.len())
                } else {
                    format!("{} whitespace characters", run.len())
                };
                Err(FflError::Whitespace {
                    at: self.at(),
                    found,
                })
            }
            _ => Err(self.expected("a single space")),
        }
    }

    /// A quoted string starting at the cursor's `'`; leaves the cursor after the closing one.
    fn quoted(&mut self, what: &'static str) -> Result<String, FflError> {
        let open = self.at();
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(FflError::UnterminatedQuote { at: open, what }),
                Some('\'') if self.peek_next() == Some('\'') => {
                    text.push('\'');
                    self.pos += 2;
                }
                Some('\'') => {
                    self.pos += 1;
                    return Ok(text);
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// The token at the cursor as written: a run of letters, digits and `_`, a run of
    /// operator symbols such as `==` or `&&`, or one other character; empty at the end
    /// and at whitespace.
    fn token(&self) -> String {
        let rest = self.chars.get(self.pos..).unwrap_or_default();
        let Some(&first) = rest.first() else {
            return String::new();
        };
        if is_word_char(first) {
            rest.iter()
                .copied()
                .take_while(|&c| is_word_char(c))
                .collect()
        } else if is_symbol_char(first) {
            rest.iter()
                .copied()
                .take_while(|&c| is_symbol_char(c))
                .collect()
        } else if first.is_whitespace() {
            String::new()
        } else {
            first.to_string()
        }
    }

    /// What the cursor is on, for messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the expression".to_owned(),
            Some(c) if c.is_whitespace() || c.is_control() => describe_char(c),
            Some(_) => {
                let token = self.token();
                let shown: String = token.chars().take(24).collect();
                let more = if shown.len() < token.len() { "…" } else { "" };
                format!("`{shown}{more}`")
            }
        }
    }

    fn expected(&self, expected: &'static str) -> FflError {
        FflError::Expected {
            at: self.at(),
            expected,
            found: self.found(),
        }
    }

    /// The error for a token that is not the keyword expected here.
    fn bad_keyword(&self, expected: &'static str) -> FflError {
        let token = self.token();
        let at = self.at();
        let found = self.found();
        let is_keyword = |t: &str| matches!(t, "eq" | "matches" | "and");
        let looks_like_operator = token
            .chars()
            .next()
            .is_some_and(|c| is_word_char(c) || is_symbol_char(c));
        if !looks_like_operator || is_keyword(&token) {
            FflError::Expected {
                at,
                expected,
                found,
            }
        } else if is_keyword(&token.to_lowercase()) {
            FflError::KeywordCase {
                at,
                expected,
                found,
            }
        } else {
            FflError::UnknownOperator {
                at,
                expected,
                found,
            }
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_symbol_char(c: char) -> bool {
    matches!(c, '=' | '!' | '<' | '>' | '&' | '|' | '~' | '^')
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '\t' => "a tab".to_owned(),
        '\n' | '\r' => "a line break".to_owned(),
        c if c.is_whitespace() => format!("whitespace U+{:04X}", u32::from(c)),
        c if c.is_control() => format!("control character U+{:04X}", u32::from(c)),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn parse(text: &str) -> Expression {
        match Expression::parse(text) {
            Ok(expression) => expression,
            Err(error) => panic!("{text:?} should parse: {error}"),
        }
    }

    fn error(text: &str) -> String {
        match Expression::parse(text) {
            Ok(expression) => panic!("{text:?} should not parse, got {expression:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn wildcard(pattern: &str, claim: &str) -> bool {
        Pattern::new(pattern).matches(claim)
    }

    fn github_claims(sub: &str) -> Value {
        json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": sub,
            "aud": "api://AzureADTokenExchange",
            "repository": "contoso/app",
            "repository_id": "123456",
            "ref": "refs/heads/main",
            "job_workflow_ref": "c/wf/.github/workflows/deploy.yml@refs/heads/main",
            "run_id": 987654321u64,
            "run_attempt": 1,
        })
    }

    // --- the examples in docs/admin.md ------------------------------------------------

    #[test]
    fn a_github_job_on_any_branch_matches_the_branch_wildcard() {
        let e = parse("claims['sub'] matches 'repo:contoso/app:ref:refs/heads/*'");
        assert_eq!(
            e.clauses(),
            &[Clause {
                path: vec!["sub".into()],
                op: Op::Matches,
                value: "repo:contoso/app:ref:refs/heads/*".into(),
            }]
        );
        assert!(e.matches(&github_claims("repo:contoso/app:ref:refs/heads/main")));
        assert!(e.matches(&github_claims(
            "repo:contoso/app:ref:refs/heads/feature/x:y"
        )));
        assert!(e.matches(&github_claims("repo:contoso/app:ref:refs/heads/")));
        assert!(!e.matches(&github_claims("repo:contoso/app:ref:refs/tags/v1")));
        assert!(!e.matches(&github_claims("repo:contoso/app:environment:prod")));
        assert!(!e.matches(&github_claims("repo:Contoso/app:ref:refs/heads/main")));
    }

    #[test]
    fn a_reusable_workflow_on_main_needs_both_clauses() {
        let e = parse(
            "claims['sub'] eq 'repo:c/r:ref:refs/heads/main' and \
             claims['job_workflow_ref'] matches 'c/wf/.github/workflows/*@refs/heads/main'",
        );
        assert_eq!(e.clauses().len(), 2);
        let mut claims = github_claims("repo:c/r:ref:refs/heads/main");
        assert!(e.matches(&claims));
        assert_eq!(e.first_failure(&claims), None);

        claims["job_workflow_ref"] = json!("c/wf/.github/workflows/deploy.yml@refs/heads/dev");
        assert!(!e.matches(&claims));
        assert_eq!(e.first_failure(&claims), Some((1, &e.clauses()[1])));

        claims["sub"] = json!("repo:c/r:ref:refs/heads/dev");
        assert_eq!(e.first_failure(&claims), Some((0, &e.clauses()[0])));
    }

    #[test]
    fn eq_is_exact_and_case_sensitive() {
        let e = parse("claims['sub'] eq 'repo:c/r:ref:refs/heads/main'");
        assert!(e.matches(&json!({"sub": "repo:c/r:ref:refs/heads/main"})));
        assert!(!e.matches(&json!({"sub": "repo:C/r:ref:refs/heads/main"})));
        assert!(!e.matches(&json!({"sub": "repo:c/r:ref:refs/heads/main "})));
        assert!(!e.matches(&json!({"sub": "repo:c/r:ref:refs/heads/mai"})));
        // eq treats wildcard characters literally
        let star = parse("claims['sub'] eq 'a*'");
        assert!(star.matches(&json!({"sub": "a*"})));
        assert!(!star.matches(&json!({"sub": "ab"})));
    }

    // --- quoting and canonical text ---------------------------------------------------

    #[test]
    fn doubled_quotes_parse_to_one_and_print_back_doubled() {
        let text = "claims['it''s'] matches 'x''y*' and claims['a']['b'''] eq ''''";
        let e = parse(text);
        assert_eq!(e.clauses()[0].path, vec!["it's"]);
        assert_eq!(e.clauses()[0].value, "x'y*");
        assert_eq!(e.clauses()[1].path, vec!["a", "b'"]);
        assert_eq!(e.clauses()[1].value, "'");
        assert_eq!(e.to_string(), text);
        assert_eq!(parse(&e.to_string()), e);
        assert!(e.matches(&json!({"it's": "x'yz", "a": {"b'": "'"}})));
    }

    #[test]
    fn display_round_trips_for_built_clauses() {
        let clause = Clause {
            path: vec!["kubernetes.io".into(), "namespace".into()],
            op: Op::Matches,
            value: "x'y".into(),
        };
        assert_eq!(
            clause.to_string(),
            "claims['kubernetes.io']['namespace'] matches 'x''y'"
        );
        let awkward = [
            "",
            "'",
            "''",
            " leading",
            "trailing ",
            "a and claims['x'] eq 'y",
            "tab\there",
            "ünïcödé ✓",
            "[']",
        ];
        for value in awkward {
            for op in [Op::Eq, Op::Matches] {
                let clause = Clause {
                    path: vec![value.to_owned() + "n", "m".into()],
                    op,
                    value: value.to_owned(),
                };
                let text = clause.to_string();
                let e = parse(&text);
                assert_eq!(e.clauses(), std::slice::from_ref(&clause), "{text}");
                assert_eq!(e.to_string(), text);
            }
        }
    }

    #[test]
    fn from_str_is_parse() {
        let e: Expression = "claims['sub'] eq 'x'".parse().unwrap();
        assert_eq!(e, parse("claims['sub'] eq 'x'"));
        assert!("claims['sub'] ne 'x'".parse::<Expression>().is_err());
    }

    #[test]
    fn empty_value_matches_only_empty_claims() {
        let e = parse("claims['environment'] eq ''");
        assert!(e.matches(&json!({"environment": ""})));
        assert!(!e.matches(&json!({"environment": "prod"})));
        assert!(!e.matches(&json!({})));
        let m = parse("claims['environment'] matches ''");
        assert!(m.matches(&json!({"environment": ""})));
        assert!(!m.matches(&json!({"environment": "x"})));
    }

    // --- claim shapes ------------------------------------------------------------------

    #[test]
    fn a_pod_in_an_allowed_namespace_matches_the_nested_claim() {
        let e = parse(
            "claims['kubernetes.io']['namespace'] matches 'team-*' and \
             claims['kubernetes.io']['serviceaccount']['name'] eq 'deployer'",
        );
        let pod = |ns: &str, sa: &str| {
            json!({
                "iss": "https://westeurope.oic.prod-aks.azure.com/t/u/",
                "sub": format!("system:serviceaccount:{ns}:{sa}"),
                "kubernetes.io": {
                    "namespace": ns,
                    "serviceaccount": {"name": sa, "uid": "0b5c"},
                    "pod": {"name": "p", "uid": "1c"},
                },
            })
        };
        assert!(e.matches(&pod("team-a", "deployer")));
        assert_eq!(
            e.first_failure(&pod("kube-system", "deployer"))
                .map(|f| f.0),
            Some(0)
        );
        assert_eq!(
            e.first_failure(&pod("team-a", "default")).map(|f| f.0),
            Some(1)
        );
        // A flat claim that happens to carry the dotted name is not the nested one.
        assert!(!e.matches(&json!({"kubernetes.io.namespace": "team-a"})));
        // Paths go only through objects.
        assert!(!e.matches(&json!({"kubernetes.io": "team-a"})));
        assert!(!e.matches(&json!({"kubernetes.io": ["team-a"]})));
        assert_eq!(e.claim_names().collect::<Vec<_>>(), vec!["kubernetes.io"]);
    }

    #[test]
    fn a_dotted_claim_name_is_one_top_level_claim() {
        let e = parse("claims['kubernetes.io'] eq 'x'");
        assert!(e.matches(&json!({"kubernetes.io": "x"})));
        assert!(!e.matches(&json!({"kubernetes": {"io": "x"}})));
    }

    #[test]
    fn missing_null_and_object_claims_never_match() {
        for e in [
            parse("claims['x'] matches '*'"),
            parse("claims['x'] eq ''"),
            parse("claims['x'] eq 'null'"),
        ] {
            assert!(!e.matches(&json!({})), "{e}");
            assert!(!e.matches(&json!({"x": null})), "{e}");
            assert!(!e.matches(&json!({"x": {}})), "{e}");
            assert!(!e.matches(&json!({"x": {"y": "z"}})), "{e}");
            assert!(!e.matches(&json!({"x": []})), "{e}");
            assert!(!e.matches(&json!({"x": [null, {}, [""]]})), "{e}");
            assert!(!e.matches(&json!("not an object")), "{e}");
            assert!(!e.matches(&Value::Null), "{e}");
        }
        assert!(parse("claims['x'] matches '*'").matches(&json!({"x": ""})));
    }

    #[test]
    fn an_array_claim_matches_when_any_element_does() {
        let e = parse("claims['groups'] matches 'deploy-*'");
        assert!(e.matches(&json!({"groups": ["readers", "deploy-prod"]})));
        assert!(!e.matches(&json!({"groups": ["readers", "writers"]})));
        let aud = parse("claims['aud'] eq 'api://AzureADTokenExchange'");
        assert!(aud.matches(&json!({"aud": ["other", "api://AzureADTokenExchange"]})));
        assert!(aud.matches(&json!({"aud": "api://AzureADTokenExchange"})));
        let n = parse("claims['ids'] eq '7'");
        assert!(n.matches(&json!({"ids": [1, {"7": 7}, 7]})));
        let b = parse("claims['flags'] eq 'true'");
        assert!(b.matches(&json!({"flags": [false, true]})));
        // Arrays inside arrays are not searched.
        assert!(!e.matches(&json!({"groups": [["deploy-prod"]]})));
    }

    #[test]
    fn numbers_and_booleans_compare_by_their_json_text() {
        let claims = json!({
            "run_attempt": 2, "big": 18446744073709551615u64, "neg": -3,
            "ratio": 1.5, "protected": true, "draft": false,
        });
        assert!(parse("claims['run_attempt'] eq '2'").matches(&claims));
        assert!(!parse("claims['run_attempt'] eq '02'").matches(&claims));
        assert!(!parse("claims['run_attempt'] eq '2.0'").matches(&claims));
        assert!(parse("claims['big'] matches '1844*'").matches(&claims));
        assert!(parse("claims['neg'] eq '-3'").matches(&claims));
        assert!(parse("claims['ratio'] eq '1.5'").matches(&claims));
        assert!(parse("claims['protected'] eq 'true'").matches(&claims));
        assert!(!parse("claims['protected'] eq 'True'").matches(&claims));
        assert!(parse("claims['draft'] matches 'f?lse'").matches(&claims));
        // A string that looks like a number is still a string.
        assert!(parse("claims['id'] eq '42'").matches(&json!({"id": "42"})));
    }

    #[test]
    fn claim_names_lists_each_top_level_name_once_in_order() {
        let e = parse(
            "claims['sub'] matches 'repo:*' and claims['kubernetes.io']['namespace'] eq 'a' \
             and claims['sub'] matches '*:main' and claims['kubernetes.io']['pod']['name'] eq 'p' \
             and claims['ref'] eq 'refs/heads/main'",
        );
        assert_eq!(
            e.claim_names().collect::<Vec<_>>(),
            vec!["sub", "kubernetes.io", "ref"]
        );
    }

    // --- wildcards ---------------------------------------------------------------------

    #[test]
    fn star_matches_any_run_including_separators_and_nothing() {
        assert!(wildcard("*", ""));
        assert!(wildcard("*", "anything:at/all"));
        assert!(wildcard("**", ""));
        assert!(wildcard("a*", "a"));
        assert!(wildcard("a*b", "ab"));
        assert!(wildcard("a*b", "a:/:/b"));
        assert!(wildcard("*b", "aaab"));
        assert!(!wildcard("*b", "aaba"));
        assert!(wildcard("a*b*c", "abc"));
        assert!(wildcard("a*b*c", "a-b-b-c-c"));
        assert!(!wildcard("a*b*c", "a-c-b"));
        assert!(wildcard("ab*ba", "aba*ba"));
        assert!(
            !wildcard("aba*aba", "ababa"),
            "head and tail must not overlap"
        );
        assert!(wildcard("aba*aba", "abaaba"));
        assert!(
            wildcard("*abc*", "xxabxabcxx"),
            "a failed partial match is retried"
        );
        assert!(!wildcard("", "x"));
        assert!(wildcard("", ""));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(wildcard("?", "a"));
        assert!(!wildcard("?", ""));
        assert!(!wildcard("?", "ab"));
        assert!(wildcard("v?.?", "v1.2"));
        assert!(!wildcard("v?.?", "v10.2"));
        assert!(wildcard("?", "é"), "one Unicode scalar, two bytes");
        assert!(wildcard("?", "😀"), "one Unicode scalar, four bytes");
        assert!(!wildcard("??", "é"));
        assert!(wildcard("*?", "é"));
        assert!(wildcard("é?*?", "ééé"));
        assert!(wildcard("*?x?*", "ü x ü"));
        assert!(wildcard("*??", "ab"));
        assert!(!wildcard("*???", "ab"));
        assert!(wildcard("a*?b*?c", "a1b2c"));
        assert!(!wildcard("a*?b*?c", "abc"));
    }

    #[test]
    fn wildcards_are_case_sensitive_and_other_characters_literal() {
        assert!(!wildcard("Repo:*", "repo:x"));
        assert!(wildcard("a.b", "a.b"));
        assert!(!wildcard("a.b", "axb"));
        assert!(wildcard("[ab]", "[ab]"));
        assert!(!wildcard("[ab]", "a"));
        assert!(wildcard("a\\*", "a\\anything"), "backslash does not escape");
    }

    /// A straightforward dynamic-programming matcher, the reference for the fast one.
    fn reference(pattern: &str, claim: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let s: Vec<char> = claim.chars().collect();
        // dp[j]: does p[..i] match s[..j]
        let mut dp = vec![false; s.len() + 1];
        dp[0] = true;
        for &pc in &p {
            let mut next = vec![false; s.len() + 1];
            match pc {
                '*' => {
                    let mut any = false;
                    for j in 0..=s.len() {
                        any |= dp[j];
                        next[j] = any;
                    }
                }
                _ => {
                    for j in 1..=s.len() {
                        next[j] = dp[j - 1] && (pc == '?' || pc == s[j - 1]);
                    }
                }
            }
            dp = next;
        }
        dp[s.len()]
    }

    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |c| {
                        let mut t = s.clone();
                        t.push(*c);
                        t
                    })
                })
                .collect();
            out.extend(layer.iter().cloned());
        }
        out
    }

    #[test]
    fn the_fast_matcher_agrees_with_the_reference_on_every_small_case() {
        let patterns = all_strings(&['a', 'b', 'é', '*', '?'], 5);
        let claims = all_strings(&['a', 'b', 'é'], 5);
        for pattern in &patterns {
            let compiled = Pattern::new(pattern);
            for claim in &claims {
                assert_eq!(
                    compiled.matches(claim),
                    reference(pattern, claim),
                    "pattern {pattern:?} against {claim:?}"
                );
            }
        }
    }

    #[test]
    fn pathological_patterns_finish_quickly() {
        let long_a = "a".repeat(100_000);
        let started = Instant::now();
        assert!(!wildcard("a*a*a*a*a*b", &long_a));
        assert!(!wildcard("*a*a*a*a*a*a*a*a*a*a*b*", &long_a));
        assert!(wildcard("a*a*a*a*a*a", &long_a));
        assert!(!wildcard("*aaaaaaaaaaaaaaaaaaab*", &long_a));
        assert!(!wildcard("*?a?a?a?a?b*", &long_a));
        let tricky = format!("{}b", "ab".repeat(20_000));
        assert!(wildcard("*a*b*b", &tricky));
        assert!(wildcard("*bb*", &tricky));
        assert!(!wildcard("*aa*", &tricky));
        // Debug builds are slow; exponential backtracking would take far longer than this.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_longest_expression_evaluates_quickly() {
        let clause = "claims['sub'] matches '*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b'";
        let text = vec![clause; 25].join(" and ");
        assert!(text.chars().count() <= MAX_EXPRESSION_CHARS);
        let e = parse(&text);
        let claims = json!({"sub": "a".repeat(600) + "b"});
        let started = Instant::now();
        for _ in 0..100 {
            assert!(e.matches(&claims));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // --- syntax errors -----------------------------------------------------------------

    #[test]
    fn unknown_operators_are_named_with_the_ones_that_exist() {
        assert_eq!(
            error("claims['actor'] equals 'x'"),
            "at character 17: expected `eq` or `matches`, found `equals`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert_eq!(
            error("claims['sub'] ne 'x'"),
            "at character 15: expected `eq` or `matches`, found `ne`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert_eq!(
            error("claims['sub'] == 'x'"),
            "at character 15: expected `eq` or `matches`, found `==`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' or claims['sub'] eq 'y'"),
            "at character 22: expected `and`, found `or`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' && claims['sub'] eq 'y'"),
            "at character 22: expected `and`, found `&&`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert!(error("claims['sub'] contains 'x'").contains("found `contains`; FFL has only"));
        assert!(error("not claims['sub'] eq 'x'").contains("expected `claims`, found `not`"));
    }

    #[test]
    fn keywords_must_be_lower_case() {
        assert_eq!(
            error("claims['sub'] EQ 'x'"),
            "at character 15: expected `eq` or `matches`, found `EQ`; keywords are lower-case"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' AND claims['a'] eq 'b'"),
            "at character 22: expected `and`, found `AND`; keywords are lower-case"
        );
        assert_eq!(
            error("Claims['sub'] eq 'x'"),
            "at character 1: expected `claims`, found `Claims`"
        );
    }

    #[test]
    fn whitespace_must_be_single_spaces() {
        assert_eq!(
            error("claims['sub']\teq 'x'"),
            "at character 14: expected a single space, found a tab; \
             the parts of a clause and `and` are separated by exactly one space"
        );
        assert_eq!(
            error("claims['sub']  eq 'x'"),
            "at character 14: expected a single space, found 2 spaces; \
             the parts of a clause and `and` are separated by exactly one space"
        );
        assert!(error("claims['sub'] eq \t'x'").starts_with(
            "at character 17: expected a single space, found 2 whitespace characters"
        ));
        assert!(
            error("claims['sub'] eq 'x'  and claims['a'] eq 'b'")
                .starts_with("at character 21: expected a single space, found 2 spaces")
        );
        assert!(
            error("claims['sub'] eq 'x' and\nclaims['a'] eq 'b'")
                .starts_with("at character 25: expected a single space, found a line break")
        );
        assert_eq!(
            error(" claims['sub'] eq 'x'"),
            "at character 1: expected `claims`, found a space"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' "),
            "at character 21: whitespace after the last clause"
        );
        assert_eq!(
            error("claims['sub'] eq 'x'\n"),
            "at character 21: whitespace after the last clause"
        );
        assert_eq!(
            error("claims['sub']eq 'x'"),
            "at character 14: expected a single space, found `eq`"
        );
        assert_eq!(
            error("claims['sub'] eq'x'"),
            "at character 17: expected a single space, found `'`"
        );
        assert_eq!(
            error("claims[ 'sub'] eq 'x'"),
            "at character 8: expected a claim name in single quotes, found a space"
        );
        assert!(
            error("claims['sub'] eq 'x'\u{a0}and claims['a'] eq 'b'")
                .starts_with("at character 21: expected a single space, found whitespace U+00A0")
        );
    }

    #[test]
    fn empty_and_oversized_expressions_are_refused() {
        let empty =
            "the expression is empty; write at least one clause, e.g. claims['sub'] eq '...'";
        assert_eq!(error(""), empty);
        assert_eq!(error("   "), empty);
        assert_eq!(error("\t\n"), empty);

        let long = format!("claims['sub'] eq '{}'", "x".repeat(MAX_EXPRESSION_CHARS));
        assert_eq!(
            error(&long),
            format!(
                "the expression is {} characters long; at most 2048 are allowed",
                MAX_EXPRESSION_CHARS + 19
            )
        );
        let exact = format!(
            "claims['sub'] eq '{}'",
            "é".repeat(MAX_EXPRESSION_CHARS - 19)
        );
        assert_eq!(exact.chars().count(), MAX_EXPRESSION_CHARS);
        parse(&exact);
    }

    #[test]
    fn at_most_fifty_clauses() {
        let clause = "claims['a'] eq 'b'";
        let fifty = vec![clause; MAX_CLAUSES].join(" and ");
        assert_eq!(parse(&fifty).clauses().len(), 50);
        let fifty_one = vec![clause; MAX_CLAUSES + 1].join(" and ");
        let at = 50 * (clause.len() + 5) + 1;
        assert_eq!(
            error(&fifty_one),
            format!("at character {at}: too many clauses; at most 50 are allowed")
        );
    }

    #[test]
    fn quotes_must_be_closed_and_single() {
        assert_eq!(
            error("claims['sub'] eq 'x"),
            "at character 18: the quoted value starting here is never closed \
             (a quote inside it is written twice: '')"
        );
        assert_eq!(
            error("claims['sub'] eq 'it''"),
            "at character 18: the quoted value starting here is never closed \
             (a quote inside it is written twice: '')"
        );
        assert_eq!(
            error("claims['sub] eq 'x'"),
            "at character 18: expected `]`, found `x`"
        );
        assert_eq!(
            error("claims['sub"),
            "at character 8: the quoted claim name starting here is never closed \
             (a quote inside it is written twice: '')"
        );
        assert_eq!(
            error("claims[\"sub\"] eq 'x'"),
            "at character 8: expected a claim name in single quotes, found `\"`"
        );
        assert_eq!(
            error("claims['sub'] eq \"x\""),
            "at character 18: expected a value in single quotes, found `\"`"
        );
        assert_eq!(
            error("claims['sub'] eq x"),
            "at character 18: expected a value in single quotes, found `x`"
        );
        assert_eq!(
            error("claims['sub'] eq 'x'y"),
            "at character 21: expected ` and ` or the end of the expression, found `y`"
        );
        assert_eq!(
            error("claims['sub'] eq 'x''"),
            "at character 18: the quoted value starting here is never closed \
             (a quote inside it is written twice: '')"
        );
    }

    #[test]
    fn claim_references_must_be_well_formed() {
        assert_eq!(
            error("claims[''] eq 'x'"),
            "at character 8: the claim name is empty"
        );
        assert_eq!(
            error("claims['a'][''] eq 'x'"),
            "at character 13: the claim name is empty"
        );
        assert_eq!(
            error("claims.sub eq 'x'"),
            "at character 7: expected `[`, found `.`"
        );
        assert_eq!(
            error("claims eq 'x'"),
            "at character 7: expected `[`, found a space"
        );
        assert_eq!(
            error("claim['sub'] eq 'x'"),
            "at character 1: expected `claims`, found `claim`"
        );
        assert_eq!(
            error("claimsx['sub'] eq 'x'"),
            "at character 1: expected `claims`, found `claimsx`"
        );
        assert_eq!(
            error("claims['sub'.] eq 'x'"),
            "at character 13: expected `]`, found `.`"
        );
        assert_eq!(
            error("claims['sub']['x'] 'x'"),
            "at character 20: expected `eq` or `matches`, found `'`"
        );
        assert_eq!(
            error("claims['sub'] eq"),
            "at character 17: expected a single space, found the end of the expression"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' and"),
            "at character 25: expected a single space, found the end of the expression"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' and "),
            "at character 26: expected `claims`, found the end of the expression"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' and x"),
            "at character 26: expected `claims`, found `x`"
        );
        assert_eq!(
            error("claims['sub'] and 'x'"),
            "at character 15: expected `eq` or `matches`, found `and`"
        );
        assert_eq!(
            error("claims['sub'] eq 'x' eq 'y'"),
            "at character 22: expected `and`, found `eq`"
        );
        assert_eq!(
            error("(claims['sub'] eq 'x')"),
            "at character 1: expected `claims`, found `(`"
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(
            error("claims['ünï'] ne 'x'"),
            "at character 15: expected `eq` or `matches`, found `ne`; \
             FFL has only the operators `eq`, `matches` and `and`"
        );
        assert_eq!(
            Expression::parse("claims['ünï'] ne 'x'")
                .unwrap_err()
                .position(),
            Some(15)
        );
        assert_eq!(FflError::Empty.position(), None);
    }

    #[test]
    fn long_tokens_are_shortened_in_messages() {
        let word = "x".repeat(100);
        let message = error(&format!("claims['sub'] {word} 'x'"));
        assert!(
            message.contains(&format!("found `{}…`", "x".repeat(24))),
            "{message}"
        );
    }

    #[test]
    fn control_characters_outside_quotes_are_named() {
        assert_eq!(
            error("claims['sub'] eq 'x'\u{0}"),
            "at character 21: expected ` and ` or the end of the expression, \
             found control character U+0000"
        );
    }

    #[test]
    fn values_may_hold_any_character() {
        let e = parse("claims['sub'] eq 'a and b\tc  d'");
        assert_eq!(e.clauses()[0].value, "a and b\tc  d");
        assert_eq!(e.clauses().len(), 1);
    }

    #[test]
    fn the_sub_prefix_is_the_longest_literal_start_of_a_sub_clause() {
        let prefix = |text: &str| {
            Expression::parse(text)
                .unwrap()
                .sub_prefix()
                .map(str::to_owned)
        };
        assert_eq!(prefix("claims['sub'] eq 'a:b'").as_deref(), Some("a:b"));
        assert_eq!(
            prefix("claims['sub'] matches 'repo:o/r:*'").as_deref(),
            Some("repo:o/r:")
        );
        assert_eq!(
            prefix("claims['sub'] matches 'repo:o/?:*'").as_deref(),
            Some("repo:o/")
        );
        assert_eq!(prefix("claims['sub'] matches '*:prod'"), None);
        assert_eq!(prefix("claims['actor'] eq 'octocat'"), None);
        assert_eq!(
            prefix("claims['sub'] matches 'repo:*' and claims['sub'] matches 'repo:o/r:ref:*'")
                .as_deref(),
            Some("repo:o/r:ref:")
        );
    }
}
