//! The tenancy rules: parsing of the settings (with errors that say what to
//! fix) and the decisions, one example per case, plus the glob matcher
//! against a naive one.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::Inbound;

fn list(s: &str) -> AllowList {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn refused(r: Result<&str, Rejection>) -> String {
    match r {
        Err(e @ Rejection::ScopeNotAllowed(_)) => {
            assert_eq!(e.code(), "scope_not_allowed");
            e.to_string()
        }
        other => panic!("expected scope_not_allowed, got {other:?}"),
    }
}

#[test]
fn allow_list_parses_users_scopes_and_wildcards() {
    let l = list(" alice = shop-a , shop-b ; bob=shop-c;ops=*;");
    assert_eq!(l.to_string(), "alice=shop-a,shop-b;bob=shop-c;ops=*");
    let auth = ScopeAuth::AllowList(l);
    assert_eq!(auth.scope(Some("alice"), Some("shop-b")), Ok("shop-b"));
    assert_eq!(auth.scope(Some("ops"), Some("anything")), Ok("anything"));
    assert_eq!(auth.scope(Some("ops"), None), Ok(DEFAULT_SCOPE));
    assert!(refused(auth.scope(Some("bob"), Some("shop-a"))).contains("\"bob\""));
    assert!(refused(auth.scope(Some("alice"), None)).contains("\"default\""));
    assert!(refused(auth.scope(Some("mallory"), Some("shop-a"))).contains("no entry"));
    assert!(refused(auth.scope(None, Some("shop-a"))).contains("no user_id"));
    assert!(refused(auth.scope(Some(""), Some("shop-a"))).contains("no user_id"));
    let with_default = ScopeAuth::AllowList(list("alice=default"));
    assert_eq!(
        with_default.scope(Some("alice"), Some("")),
        Ok(DEFAULT_SCOPE)
    );
}

#[test]
fn bad_allow_lists_say_what_to_fix() {
    let cases = [
        ("", "empty"),
        (" ; ", "empty"),
        ("alice", "no '='"),
        ("=shop-a", "names no user"),
        ("alice=", "empty scope"),
        ("alice=a,,b", "empty scope"),
        ("alice=a;alice=b", "two entries"),
        ("alice=*,shop-a", "'*' alone"),
        ("alice=a=b", "'='"),
        ("al\0ice=a", "NUL"),
    ];
    for (input, says) in cases {
        let err = input.parse::<AllowList>().expect_err(input).to_string();
        assert!(err.contains(says), "{input:?}: {err}");
    }
    let long = format!("alice={}", "s".repeat(MAX_KEY_LEN + 1));
    assert!(long.parse::<AllowList>().is_err());
}

#[test]
fn user_id_mode_makes_the_user_the_scope() {
    let auth = ScopeAuth::UserId;
    assert_eq!(auth.scope(Some("alice"), None), Ok("alice"));
    assert_eq!(auth.scope(Some("alice"), Some("")), Ok("alice"));
    assert_eq!(auth.scope(Some("alice"), Some("alice")), Ok("alice"));
    assert!(refused(auth.scope(Some("alice"), Some("bob"))).contains("\"bob\""));
    assert!(refused(auth.scope(None, None)).contains("no user_id"));
    assert_eq!(
        auth.scope(Some("a\0"), None).map_err(|e| e.code()),
        Err("bad_key")
    );
}

#[test]
fn open_mode_ignores_user_id_and_bad_app_ids_stay_bad_keys() {
    let auth = ScopeAuth::Open;
    assert_eq!(auth.scope(Some("alice"), Some("bob")), Ok("bob"));
    assert_eq!(auth.scope(None, None), Ok(DEFAULT_SCOPE));
    for auth in [
        ScopeAuth::Open,
        ScopeAuth::UserId,
        ScopeAuth::AllowList(list("a=*")),
    ] {
        let err = auth.scope(Some("a"), Some("x\0")).expect_err("NUL");
        assert_eq!(err.code(), "bad_key", "{auth:?}");
    }
}

/// The refusal is checked right after the key, before anything in the body,
/// and the open mode is exactly `parse`.
#[test]
fn parse_as_checks_the_scope_before_the_body() {
    let inbound = Inbound {
        message_id: Some("m-1"),
        app_id: Some("shop-b"),
        body: b"not json",
        ..Inbound::default()
    };
    let err = inbound
        .parse_as(1024, &ScopeAuth::UserId, Some("alice"))
        .expect_err("foreign scope");
    assert_eq!(err.code(), "scope_not_allowed");
    assert_eq!(
        inbound.parse_as(1024, &ScopeAuth::Open, Some("alice")),
        inbound.parse(1024)
    );
    let ok = Inbound {
        app_id: None,
        body: br#"{"account_id":"a","amount":1,"currency":"EUR"}"#,
        ..inbound
    };
    let request = ok
        .parse_as(1024, &ScopeAuth::UserId, Some("alice"))
        .expect("own scope");
    assert_eq!(request.scope(), "alice");
    assert_eq!(request.reference_id(), crate::reference_id("alice", "m-1"));
}

#[test]
fn the_default_reply_patterns_allow_the_scopes_queues_and_direct_reply_to() {
    let allow = ReplyToAllow::default();
    assert_eq!(allow.to_string(), DEFAULT_REPLY_TO_ALLOW);
    for ok in [
        "shop-a.replies",
        "shop-a.x.y",
        "amq.rabbitmq.reply-to",
        "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OA==",
    ] {
        assert!(allow.allows("shop-a", ok), "{ok}");
    }
    for refused in [
        "shop-b.replies",
        "shop-a",
        "shop-areplies",
        "xshop-a.replies",
        "idem.charges",
        "amq.rabbitmq.reply-tox",
        "",
    ] {
        assert!(!allow.allows("shop-a", refused), "{refused}");
    }
}

/// A scope is matched as text: a producer that names its scope `*` (open
/// mode) gets no wildcard.
#[test]
fn a_scope_is_never_a_wildcard() {
    let allow: ReplyToAllow = "{scope}.*".parse().unwrap();
    assert!(allow.allows("*", "*.q"));
    assert!(!allow.allows("*", "victim.q"));
    let exact: ReplyToAllow = "replies.{scope}".parse().unwrap();
    assert!(exact.allows("a", "replies.a"));
    assert!(!exact.allows("a", "replies.ab"));
}

#[test]
fn reply_to_settings_parse_and_bad_ones_say_what_to_fix() {
    assert_eq!(" any ".parse::<ReplyToAllow>(), Ok(ReplyToAllow::Any));
    let none: ReplyToAllow = "none".parse().unwrap();
    assert!(!none.allows("a", "a.q"));
    assert_eq!(none.to_string(), "none");
    assert!(ReplyToAllow::Any.allows("a", "anything"));
    let two: ReplyToAllow = "replies.*, {scope}-*".parse().unwrap();
    assert_eq!(two.to_string(), "replies.*,{scope}-*");
    assert!(two.allows("a", "a-1") && two.allows("b", "replies.x"));
    for (input, says) in [
        ("", "empty"),
        ("a.*,,b", "pattern 2 is empty"),
        ("{tenant}.*", "the only placeholder is {scope}"),
        ("{scope", "stray"),
        ("a}", "stray"),
        ("a.*,any", "stands alone"),
        ("q\0", "NUL"),
    ] {
        let err = input.parse::<ReplyToAllow>().expect_err(input).to_string();
        assert!(err.contains(says), "{input:?}: {err}");
    }
}

/// Whether `text` matches `pattern` (`*` any run), by plain backtracking.
fn naive(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| naive(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && naive(rest, &text[1..]),
    }
}

proptest! {
    /// The leftmost-run matcher agrees with backtracking on any pattern and
    /// text over a small alphabet (where overlaps are common).
    #[test]
    fn glob_agrees_with_backtracking(pattern in "[ab.*]{0,8}", text in "[ab.]{0,10}") {
        let allow: ReplyToAllow = if pattern.is_empty() {
            ReplyToAllow::Patterns(Vec::new())
        } else {
            pattern.parse().unwrap()
        };
        let expected = !pattern.is_empty() && naive(pattern.as_bytes(), text.as_bytes());
        prop_assert_eq!(allow.allows("s", &text), expected);
    }
}
