//! Properties of [`Inbound::parse_as`] over any input a producer can send.
//!
//! The unit tests in `envelope` and `tenancy` pin one example per reason;
//! these check that nothing else exists: any message id, scope, broker user
//! and scope rule, content type, reply address, correlation id, trace header,
//! body and limit gets one decision, the same one
//! every time, the one the contract (`docs/contracts.md`, "What idem decides")
//! names, and a valid decision carries values consistent with its parts.
//! Generators are weighted so valid messages and every reason code are reached
//! (`generators_reach_every_decision` checks that they are).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

use crate::{DEFAULT_SCOPE, Inbound, MAX_KEY_LEN, ScopeAuth, fingerprint, reference_id};

/// Every reason code `Rejection::code` may return, as `docs/contracts.md` lists them.
const CODES: [&str; 7] = [
    "missing_message_id",
    "bad_key",
    "scope_not_allowed",
    "content_type",
    "too_large",
    "not_json",
    "schema",
];

/// One generated delivery, owned, so `Inbound` can borrow from it.
#[derive(Debug, Clone)]
struct Parts {
    message_id: Option<String>,
    app_id: Option<String>,
    content_type: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    body: Vec<u8>,
    max_body: usize,
    /// The broker-validated `user_id` property.
    user_id: Option<String>,
    /// The scope rule: 0 open, 1 user_id, 2 the allow-list [`ALLOW`].
    auth: u8,
}

/// The allow-list of the generated `allow_list` rule; [`allowed`] is its
/// meaning, written out.
const ALLOW: &str = "alice=shop-a,default;bob=*";

fn allowed(user: &str, scope: &str) -> bool {
    user == "bob" || (user == "alice" && ["shop-a", DEFAULT_SCOPE].contains(&scope))
}

impl Parts {
    fn auth(&self) -> ScopeAuth {
        match self.auth {
            0 => ScopeAuth::Open,
            1 => ScopeAuth::UserId,
            _ => ScopeAuth::AllowList(ALLOW.parse().expect("a valid list")),
        }
    }

    /// The decision under test.
    fn decide(&self) -> Result<crate::ChargeRequest, crate::Rejection> {
        self.inbound()
            .parse_as(self.max_body, &self.auth(), self.user_id.as_deref())
    }

    fn inbound(&self) -> Inbound<'_> {
        Inbound {
            message_id: self.message_id.as_deref(),
            app_id: self.app_id.as_deref(),
            content_type: self.content_type.as_deref(),
            reply_to: self.reply_to.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
            body: &self.body,
        }
    }
}

/// Strings a producer may put in a property: valid keys, the empty string,
/// any Unicode, control characters and NUL, and lengths around the 255-byte limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_.-]{1,16}",
        1 => Just(String::new()),
        2 => any::<String>(),
        2 => "[\\x00-\\x1f\\x7f a-z]{0,12}",
        1 => (250..=260usize).prop_map(|n| "k".repeat(n)),
        1 => (48..=54usize).prop_map(|n| "é€".repeat(n)),
        1 => ".{256,600}",
    ]
}

fn property() -> impl Strategy<Value = Option<String>> {
    prop_oneof![1 => Just(None), 3 => text().prop_map(Some)]
}

/// Names the allow-list knows, so the scope rules accept as well as refuse.
fn tenant() -> impl Strategy<Value = Option<String>> {
    let known = vec!["alice", "bob", "shop-a", DEFAULT_SCOPE];
    prop_oneof![
        3 => property(),
        2 => proptest::sample::select(known).prop_map(|n| Some(n.to_owned())),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        2 => Just(Some("application/json".to_owned())),
        1 => Just(Some(" Application/JSON ; charset=utf-8".to_owned())),
        1 => Just(Some(";".to_owned())),
        2 => text().prop_map(Some),
    ]
}

fn traceparent() -> impl Strategy<Value = Option<String>> {
    let valid = ("[0-9a-f]{2}", "[0-9a-f]{32}", "[0-9a-f]{16}", "[0-9a-f]{2}")
        .prop_map(|(v, t, p, f)| format!("{v}-{t}-{p}-{f}"));
    prop_oneof![2 => Just(None), 2 => valid.prop_map(Some), 1 => text().prop_map(Some)]
}

/// A body the schema accepts.
fn valid_body() -> impl Strategy<Value = Map<String, Value>> {
    (
        "[a-zA-Z0-9_]{1,24}",
        1..=i64::MAX,
        "[A-Z]{3}",
        proptest::option::of(".{0,40}"),
    )
        .prop_map(|(account, amount, currency, description)| {
            let mut body = Map::new();
            body.insert("account_id".into(), json!(account));
            body.insert("amount".into(), json!(amount));
            body.insert("currency".into(), json!(currency));
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            body
        })
}

/// Values that are wrong for some field: other types, bounds, case, NUL.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(1.0)),
        Just(json!(u64::MAX)),
        Just(json!("")),
        Just(json!("eur")),
        Just(json!("EURO")),
        Just(json!("EU\u{0}")),
        Just(json!("ÉUR")),
        Just(json!("a\u{0}b")),
        Just(json!("x".repeat(256))),
        Just(json!("d".repeat(1025))),
        Just(json!([1, 2])),
        Just(json!({"nested": true})),
        text().prop_map(Value::from),
    ]
}

const FIELDS: [&str; 5] = ["account_id", "amount", "currency", "description", "extra"];

/// A valid body with one field removed, replaced by an odd value, or added.
fn perturbed_body() -> impl Strategy<Value = Map<String, Value>> {
    (valid_body(), 0..FIELDS.len(), any::<bool>(), odd_value()).prop_map(
        |(mut body, field, remove, value)| {
            if remove {
                body.remove(FIELDS[field]);
            } else {
                body.insert(FIELDS[field].into(), value);
            }
            body
        },
    )
}

/// Bodies: arbitrary bytes, JSON that is not an object, and objects at and near the schema.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = |m: Map<String, Value>| Value::Object(m).to_string().into_bytes();
    prop_oneof![
        3 => valid_body().prop_map(object),
        3 => perturbed_body().prop_map(object),
        2 => vec(any::<u8>(), 0..200),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => odd_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

fn max_body() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(64 * 1024), 1 => 0..128usize, 1 => Just(usize::MAX)]
}

fn parts() -> impl Strategy<Value = Parts> {
    let message_id = prop_oneof![
        3 => "[a-z0-9-]{1,32}".prop_map(Some),
        2 => property(),
    ];
    (
        (message_id, tenant(), content_type(), property()),
        (property(), traceparent(), body(), max_body(), 0..5u8),
        (
            tenant(),
            prop_oneof![2 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        ),
    )
        .prop_map(
            |((message_id, app_id, content_type, reply_to), rest, tenancy)| {
                let (correlation_id, traceparent, body, max_body, at_edge) = rest;
                let (user_id, auth) = tenancy;
                // The limit's edge: a body exactly at it passes, one byte over does not.
                let max_body = match at_edge {
                    0 => body.len(),
                    1 => body.len().saturating_sub(1),
                    _ => max_body,
                };
                Parts {
                    message_id,
                    app_id,
                    content_type,
                    reply_to,
                    correlation_id,
                    traceparent,
                    body,
                    max_body,
                    user_id,
                    auth,
                }
            },
        )
}

/// The contract's decision, computed without `parse`: `Ok(())` for a valid
/// message, else the reason code of the first check that fails, in the order
/// `parse` runs them.
fn expected(p: &Parts) -> Result<(), &'static str> {
    let bad_key = |v: &str| v.len() > MAX_KEY_LEN || v.contains('\0');
    match set(&p.message_id) {
        None => return Err("missing_message_id"),
        Some(id) if bad_key(id) => return Err("bad_key"),
        Some(_) => {}
    }
    if set(&p.app_id).is_some_and(bad_key) {
        return Err("bad_key");
    }
    let (user, app) = (set(&p.user_id), set(&p.app_id));
    match (p.auth, user) {
        (0, _) => {}
        (_, None) => return Err("scope_not_allowed"),
        (1, Some(u)) if bad_key(u) => return Err("bad_key"),
        (1, Some(u)) if app.is_some_and(|a| a != u) => return Err("scope_not_allowed"),
        (1, Some(_)) => {}
        (_, Some(u)) if !allowed(u, app.unwrap_or(DEFAULT_SCOPE)) => {
            return Err("scope_not_allowed");
        }
        (_, Some(_)) => {}
    }
    if let Some(ct) = &p.content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.is_empty() && !essence.eq_ignore_ascii_case("application/json") {
            return Err("content_type");
        }
    }
    if p.body.len() > p.max_body {
        return Err("too_large");
    }
    let Ok(value) = serde_json::from_slice::<Value>(&p.body) else {
        return Err("not_json");
    };
    if !schema_ok(&value) {
        return Err("schema");
    }
    // The reply address and correlation id are checked after the body, so a
    // message bad in both is quarantined as `schema`/`not_json`, not `bad_key`.
    if set(&p.reply_to).is_some_and(bad_key) || set(&p.correlation_id).is_some_and(bad_key) {
        return Err("bad_key");
    }
    Ok(())
}

/// A property that is set and not empty (`parse` treats `""` as absent).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The charge schema, read off a JSON value.
fn schema_ok(value: &Value) -> bool {
    let Some(body) = value.as_object() else {
        return false;
    };
    let known = ["account_id", "amount", "currency", "description"];
    let text = |v: Option<&Value>, max: usize| {
        v.and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty() && s.len() <= max && !s.contains('\0'))
    };
    let description_ok = match body.get("description") {
        None | Some(Value::Null) => true,
        Some(Value::String(d)) => d.len() <= 1024 && !d.contains('\0'),
        Some(_) => false,
    };
    body.keys().all(|k| known.contains(&k.as_str()))
        && text(body.get("account_id"), 255)
        && body
            .get("amount")
            .and_then(Value::as_i64)
            .is_some_and(|a| a > 0)
        && body
            .get("currency")
            .and_then(Value::as_str)
            .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        && description_ok
}

proptest! {
    /// Any input gets exactly one decision, never a panic; a rejection's code
    /// is a documented one; the decision is the contract's (`expected`).
    #[test]
    fn any_input_gets_the_contracts_decision(p in parts()) {
        let decision = p.decide();
        match &decision {
            Ok(_) => prop_assert_eq!(expected(&p), Ok(())),
            Err(rejection) => {
                prop_assert!(CODES.contains(&rejection.code()), "{:?}", rejection);
                prop_assert_eq!(expected(&p), Err(rejection.code()), "{}", rejection);
            }
        }
    }

    /// The same input always gets the same decision (replicas and redeliveries agree).
    #[test]
    fn the_decision_is_deterministic(p in parts()) {
        prop_assert_eq!(p.decide(), p.decide());
        // `parse` is the open rule, whatever the broker user.
        prop_assert_eq!(
            p.inbound().parse(p.max_body),
            p.inbound().parse_as(p.max_body, &ScopeAuth::Open, p.user_id.as_deref())
        );
    }

    /// A valid request holds the contract's invariants, and its derived values
    /// are the ones recomputed from its parts.
    #[test]
    fn a_valid_request_is_consistent_with_its_parts(p in parts()) {
        let Ok(request) = p.decide() else {
            return Ok(());
        };
        let id = request.message_id();
        prop_assert!((1..=MAX_KEY_LEN).contains(&id.len()) && !id.contains('\0'));
        prop_assert_eq!(Some(id), p.message_id.as_deref());
        let claimed = set(&p.app_id).unwrap_or(DEFAULT_SCOPE);
        let scope = match p.auth {
            1 => set(&p.user_id).unwrap_or_default(),
            _ => claimed,
        };
        prop_assert_eq!(request.scope(), scope);
        if p.auth == 2 {
            prop_assert!(allowed(set(&p.user_id).unwrap_or_default(), scope));
        }
        let body = request.body();
        prop_assert!(body.amount > 0);
        prop_assert!(body.currency.len() == 3 && body.currency.bytes().all(|b| b.is_ascii_uppercase()));
        prop_assert!(p.body.len() <= p.max_body);
        prop_assert_eq!(
            request.fingerprint(),
            &fingerprint(&body.account_id, body.amount, &body.currency)
        );
        prop_assert_eq!(request.reference_id(), reference_id(scope, id));
        let kept = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        prop_assert_eq!(&request.reply_to, &kept(&p.reply_to));
        prop_assert_eq!(&request.correlation_id, &kept(&p.correlation_id));
        if let Some(t) = &request.traceparent {
            prop_assert!(crate::TraceParent::parse(t).is_some());
        }
    }
}

/// The generators reach valid messages and every reason code, so the
/// properties above are not vacuous; and every code is documented.
#[test]
fn generators_reach_every_decision() {
    let contracts = include_str!("../../../docs/contracts.md");
    let mut runner = TestRunner::deterministic();
    let strategy = parts();
    let mut valid = 0;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let p = strategy.new_tree(&mut runner).expect("generate").current();
        match p.decide() {
            Ok(_) => valid += 1,
            Err(r) => {
                seen.insert(r.code());
            }
        }
    }
    assert!(
        valid >= 100,
        "only {valid} of 2000 generated messages are valid"
    );
    for code in CODES {
        assert!(
            seen.contains(code),
            "no generated message is rejected as {code}"
        );
        assert!(
            contracts.contains(&format!("`{code}`")),
            "{code} is not in docs/contracts.md"
        );
    }
}
