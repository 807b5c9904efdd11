//! Who may write into which scope, and where a result may be sent
//! (`docs/contracts.md#tenants`).
//!
//! `app_id` is whatever the producer wrote: on its own it authenticates
//! nothing. `user_id` is the one property a producer cannot forge: RabbitMQ
//! refuses a publish whose `user_id` is not the user of the connection it
//! arrives on (unless that user has the `impersonator` tag, which no producer
//! should have). [`ScopeAuth`] binds the scope to it; [`ReplyToAllow`] keeps
//! result replies inside the scope's own queues.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::rejection::{DEFAULT_SCOPE, MAX_KEY_LEN, Rejection, check_key};

/// How a message's scope is authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ScopeAuth {
    /// The scope is `app_id` (or [`DEFAULT_SCOPE`]), unchecked: any producer
    /// can write into any scope. Unsafe on a vhost shared by tenants.
    #[default]
    Open,
    /// The scope is the broker-validated `user_id`. A message without one, or
    /// whose `app_id` names another scope, is refused.
    UserId,
    /// The scope is `app_id` (or [`DEFAULT_SCOPE`]), and must be listed for
    /// the message's broker-validated `user_id`.
    AllowList(AllowList),
}

impl ScopeAuth {
    /// The scope of a message with these `user_id` and `app_id` properties
    /// (empty means absent), or why its producer may not write into it. An
    /// `app_id` too long or holding NUL is `bad_key` first, in every mode.
    pub fn scope<'a>(
        &self,
        user_id: Option<&'a str>,
        app_id: Option<&'a str>,
    ) -> Result<&'a str, Rejection> {
        let app_id = match app_id {
            None | Some("") => None,
            Some(app) => Some(check_key("app_id", app)?),
        };
        let user_id = user_id.filter(|u| !u.is_empty());
        match self {
            ScopeAuth::Open => Ok(app_id.unwrap_or(DEFAULT_SCOPE)),
            ScopeAuth::UserId => {
                let user = check_key("user_id", user_id.ok_or_else(no_user)?)?;
                match app_id {
                    Some(app) if app != user => Err(Rejection::ScopeNotAllowed(format!(
                        "app_id {app:?} is not the user_id {user:?}: with IDEM_SCOPE_AUTH=user_id \
                         the scope is the broker user; leave app_id unset or set it to the user name"
                    ))),
                    _ => Ok(user),
                }
            }
            ScopeAuth::AllowList(list) => {
                let user = user_id.ok_or_else(no_user)?;
                let scope = app_id.unwrap_or(DEFAULT_SCOPE);
                match list.users.get(user) {
                    None => Err(Rejection::ScopeNotAllowed(format!(
                        "user_id {user:?} has no entry in IDEM_SCOPE_ALLOW"
                    ))),
                    Some(scopes) if !scopes.allows(scope) => {
                        Err(Rejection::ScopeNotAllowed(format!(
                            "user_id {user:?} may not write into scope {scope:?} (IDEM_SCOPE_ALLOW)"
                        )))
                    }
                    Some(_) => Ok(scope),
                }
            }
        }
    }
}

fn no_user() -> Rejection {
    Rejection::ScopeNotAllowed(
        "no user_id property: with IDEM_SCOPE_AUTH=user_id or allow_list, producers must set \
         user_id to the user they connect to the broker as"
            .to_owned(),
    )
}

/// The scopes each broker user may write into (`IDEM_SCOPE_ALLOW`), written
/// `alice=shop-a,shop-b;bob=shop-c`; `*` for a user lets it write into any
/// scope (an operator's own replay user, say). Only [`FromStr`] makes one,
/// so every list held is well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    /// Broker user -> what it may write into.
    users: BTreeMap<String, Scopes>,
}

/// What one user may write into.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scopes {
    /// `*`: any scope.
    Any,
    /// Exactly these.
    Only(BTreeSet<String>),
}

impl Scopes {
    fn allows(&self, scope: &str) -> bool {
        match self {
            Scopes::Any => true,
            Scopes::Only(set) => set.contains(scope),
        }
    }
}

/// Why a setting of [`AllowList`] or [`ReplyToAllow`] does not parse; the
/// text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(String);

fn bad<T>(why: String) -> Result<T, BadSetting> {
    Err(BadSetting(why))
}

impl FromStr for AllowList {
    type Err = BadSetting;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut users = BTreeMap::new();
        let form = "write user=scope[,scope...][;user=...]";
        // A trailing `;` is tolerated: lists are often built by concatenation.
        for (n, entry) in s.split(';').map(str::trim).enumerate() {
            let n = n + 1;
            if entry.is_empty() {
                continue;
            }
            let Some((user, scopes)) = entry.split_once('=') else {
                return bad(format!("entry {n} ({entry:?}) has no '=': {form}"));
            };
            let user = user.trim();
            if user.is_empty() {
                return bad(format!("entry {n} ({entry:?}) names no user: {form}"));
            }
            valid_name(n, "user", user)?;
            let mut names = BTreeSet::new();
            for scope in scopes.split(',').map(str::trim) {
                if scope.is_empty() {
                    return bad(format!(
                        "entry {n} ({entry:?}) has an empty scope (two commas, or none after '='): {form}"
                    ));
                }
                valid_name(n, "scope", scope)?;
                names.insert(scope.to_owned());
            }
            let allowed = if names.contains("*") {
                if names.len() > 1 {
                    return bad(format!(
                        "entry {n} ({entry:?}) lists '*' beside other scopes: '*' alone allows every scope"
                    ));
                }
                Scopes::Any
            } else {
                Scopes::Only(names)
            };
            if users.insert(user.to_owned(), allowed).is_some() {
                return bad(format!(
                    "user {user:?} has two entries: merge its scopes into one"
                ));
            }
        }
        if users.is_empty() {
            return bad(format!("the list is empty: {form}"));
        }
        Ok(Self { users })
    }
}

fn valid_name(n: usize, what: &str, name: &str) -> Result<(), BadSetting> {
    if name.len() > MAX_KEY_LEN || name.contains('\0') || name.contains('=') {
        return bad(format!(
            "entry {n}: {what} {name:?} must be 1..={MAX_KEY_LEN} bytes without NUL or '='"
        ));
    }
    Ok(())
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (user, scopes)) in self.users.iter().enumerate() {
            let sep = if i == 0 { "" } else { ";" };
            match scopes {
                Scopes::Any => write!(f, "{sep}{user}=*")?,
                Scopes::Only(set) => {
                    let names: Vec<&str> = set.iter().map(String::as_str).collect();
                    write!(f, "{sep}{user}={}", names.join(","))?;
                }
            }
        }
        Ok(())
    }
}

/// The default of `IDEM_REPLY_TO_ALLOW`: the scope's own queues and
/// RabbitMQ's Direct Reply-To (the pseudo-queue, and the per-channel form
/// the broker rewrites it to).
pub const DEFAULT_REPLY_TO_ALLOW: &str = "{scope}.*,amq.rabbitmq.reply-to,amq.rabbitmq.reply-to.*";

/// Which `reply_to` queues a message of a scope may ask its result to be
/// sent to (`IDEM_REPLY_TO_ALLOW`): `any`, `none`, or comma-separated glob
/// patterns where `*` is any run of characters (dots included) and `{scope}`
/// the message's scope, matched literally (a scope holding `*` is no
/// wildcard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyToAllow {
    /// Every queue of the vhost (the behaviour before this setting).
    Any,
    /// Only queues matching one of these (none: no reply at all).
    Patterns(Vec<Pattern>),
}

impl Default for ReplyToAllow {
    fn default() -> Self {
        DEFAULT_REPLY_TO_ALLOW
            .parse()
            .unwrap_or(ReplyToAllow::Patterns(Vec::new()))
    }
}

/// One pattern of [`ReplyToAllow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written, for messages.
    source: String,
    /// Its pieces, in order.
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Scope,
    Star,
}

impl ReplyToAllow {
    /// Whether a message of `scope` may have its result sent to `reply_to`.
    pub fn allows(&self, scope: &str, reply_to: &str) -> bool {
        match self {
            ReplyToAllow::Any => true,
            ReplyToAllow::Patterns(patterns) => patterns.iter().any(|p| p.matches(scope, reply_to)),
        }
    }
}

impl Pattern {
    fn matches(&self, scope: &str, text: &str) -> bool {
        // The literal runs between stars, the scope substituted as text.
        let mut runs = Vec::new();
        let mut run = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => run.push_str(l),
                Part::Scope => run.push_str(scope),
                Part::Star => runs.push(std::mem::take(&mut run)),
            }
        }
        runs.push(run);
        glob(&runs, text)
    }
}

/// `text` matches `runs` joined by `*`: the first run is a prefix, the last a
/// suffix, and the ones between occur in order, without overlapping. Taking
/// each middle run at its leftmost place is optimal: it leaves the most room
/// for the rest.
fn glob(runs: &[String], text: &str) -> bool {
    let [first, middle @ .., last] = runs else {
        return runs.first().is_some_and(|only| only == text);
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first.as_str()) {
        return false;
    }
    if !text.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for run in middle {
        match rest.find(run.as_str()) {
            Some(at) => rest = &rest[at + run.len()..],
            None => return false,
        }
    }
    true
}

impl FromStr for ReplyToAllow {
    type Err = BadSetting;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "any" => return Ok(ReplyToAllow::Any),
            "none" => return Ok(ReplyToAllow::Patterns(Vec::new())),
            "" => return bad("is empty: write any, none, or patterns such as {scope}.*".into()),
            _ => {}
        }
        s.split(',')
            .map(str::trim)
            .enumerate()
            .map(|(n, p)| pattern(n + 1, p))
            .collect::<Result<_, _>>()
            .map(ReplyToAllow::Patterns)
    }
}

fn pattern(n: usize, source: &str) -> Result<Pattern, BadSetting> {
    if source.is_empty() {
        return bad(format!("pattern {n} is empty (two commas?)"));
    }
    if source == "any" || source == "none" {
        return bad(format!(
            "pattern {n} is {source:?}: '{source}' stands alone, not in a list"
        ));
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        match c {
            '{' if rest.starts_with("{scope}") => {
                flush(&mut literal, &mut parts);
                parts.push(Part::Scope);
                rest = &rest["{scope}".len()..];
                continue;
            }
            '{' | '}' => {
                return bad(format!(
                    "pattern {n} ({source:?}) has a stray {c:?}: the only placeholder is {{scope}}"
                ));
            }
            '*' => {
                flush(&mut literal, &mut parts);
                parts.push(Part::Star);
            }
            '\0' => return bad(format!("pattern {n} ({source:?}) holds a NUL byte")),
            c => literal.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut literal, &mut parts);
    Ok(Pattern {
        source: source.to_owned(),
        parts,
    })
}

fn flush(literal: &mut String, parts: &mut Vec<Part>) {
    if !literal.is_empty() {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

impl fmt::Display for ReplyToAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyToAllow::Any => f.write_str("any"),
            ReplyToAllow::Patterns(p) if p.is_empty() => f.write_str("none"),
            ReplyToAllow::Patterns(p) => {
                let sources: Vec<&str> = p.iter().map(|p| p.source.as_str()).collect();
                f.write_str(&sources.join(","))
            }
        }
    }
}

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tests;
