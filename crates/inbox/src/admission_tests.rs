//! The admission of one delivery: the scope rule applied to the broker's
//! `user_id`, and a refused `reply_to` dropped (never the charge).

#![allow(clippy::unwrap_used)]

use idem_message::{ReplyToAllow, ScopeAuth};
use lapin::BasicProperties;

use super::*;

const BODY: &[u8] = br#"{"account_id":"acc_1","amount":100,"currency":"EUR"}"#;

fn props(user: Option<&str>, app: Option<&str>, reply_to: Option<&str>) -> BasicProperties {
    let mut p = BasicProperties::default().with_message_id("m-1".into());
    if let Some(u) = user {
        p = p.with_user_id(u.into());
    }
    if let Some(a) = app {
        p = p.with_app_id(a.into());
    }
    if let Some(r) = reply_to {
        p = p.with_reply_to(r.into());
    }
    p
}

fn item(p: &BasicProperties) -> Incoming<'_> {
    Incoming {
        properties: p,
        body: BODY,
        redelivered: false,
    }
}

fn tenants(scope: ScopeAuth) -> Admission {
    Admission::new(1024, scope, ReplyToAllow::default(), "idem.charges")
}

#[test]
fn user_id_mode_scopes_by_the_broker_user_and_refuses_the_rest() {
    let a = tenants(ScopeAuth::UserId);
    let own = props(Some("alice"), None, None);
    let request = a.admit(&item(&own)).unwrap();
    assert_eq!(request.scope(), "alice");
    for refused in [
        props(Some("alice"), Some("bob"), None),
        props(None, Some("alice"), None),
    ] {
        let err = a.admit(&item(&refused)).unwrap_err();
        assert_eq!(err.code(), "scope_not_allowed", "{err}");
    }
}

#[test]
fn allow_list_mode_takes_the_app_id_if_listed_for_the_user() {
    let a = tenants(ScopeAuth::AllowList("alice=shop-a,shop-b".parse().unwrap()));
    let listed = props(Some("alice"), Some("shop-b"), None);
    assert_eq!(a.admit(&item(&listed)).unwrap().scope(), "shop-b");
    let foreign = props(Some("alice"), Some("shop-c"), None);
    assert_eq!(
        a.admit(&item(&foreign)).unwrap_err().code(),
        "scope_not_allowed"
    );
}

/// A refused `reply_to` is dropped from the request (the charge stands) and
/// reported; one inside the pattern is kept and not reported.
#[test]
fn a_refused_reply_to_is_dropped_and_reported_not_the_charge() {
    let a = tenants(ScopeAuth::UserId);
    let inside = props(Some("alice"), None, Some("alice.replies"));
    let request = a.admit(&item(&inside)).unwrap();
    assert_eq!(request.reply_to.as_deref(), Some("alice.replies"));
    assert_eq!(a.refused_reply_to(&item(&inside)), None);
    for outside in ["bob.replies", "idem.charges", "idem.charges.dead", "alice"] {
        let p = props(Some("alice"), None, Some(outside));
        let request = a.admit(&item(&p)).unwrap();
        assert_eq!(request.reply_to, None, "{outside}");
        assert_eq!(a.refused_reply_to(&item(&p)), Some(outside));
    }
    let direct = props(Some("alice"), None, Some("amq.rabbitmq.reply-to.g1h2AA"));
    assert!(a.admit(&item(&direct)).unwrap().reply_to.is_some());
}

/// idem's own queues are never a reply target under patterns, even ones
/// that would match them; `any` is the old behaviour exactly.
#[test]
fn own_queues_are_refused_unless_any() {
    let star = Admission::new(1024, ScopeAuth::Open, "*".parse().unwrap(), "idem.charges");
    let any = Admission::new(1024, ScopeAuth::Open, ReplyToAllow::Any, "idem.charges");
    for own in ["idem.charges", "idem.charges.dead"] {
        let p = props(None, None, Some(own));
        assert_eq!(star.refused_reply_to(&item(&p)), Some(own));
        assert_eq!(any.refused_reply_to(&item(&p)), None);
    }
    let neighbour = props(None, None, Some("idem.chargesx"));
    assert_eq!(star.refused_reply_to(&item(&neighbour)), None);
}

/// The open admission is exactly the contract's `parse`.
#[test]
fn open_admission_is_the_old_parse() {
    let a = Admission::open(1024);
    let p = props(Some("alice"), Some("bob"), Some("anywhere"));
    let request = a.admit(&item(&p)).unwrap();
    assert_eq!(request.scope(), "bob");
    assert_eq!(request.reply_to.as_deref(), Some("anywhere"));
    assert_eq!(
        Ok(request),
        crate::delivery::inbound(&p, BODY).parse(a.max_body())
    );
}
