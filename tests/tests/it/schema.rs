//! The producer contract's JSON Schemas (`docs/schema/`) against the code:
//! the request schema accepts exactly the bodies idem's validation accepts
//! (apart from the two rules the schema's description names, asserted here
//! as such), and the result schema accepts what idem emits for every final
//! state. Events received from the broker are checked too, by every suite
//! in `results.rs` (its `body` helper).

use chrono::Utc;
use idem_events::ResultBody;
use idem_message::Inbound;
use idem_store::OutboxState;
use idem_store::event::{EventKind, ResultEvent};
use idem_tests::schema;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const MAX_BODY: usize = 1 << 20;

/// Whether idem accepts `body` as a charge request.
fn idem_accepts(body: &[u8]) -> bool {
    Inbound {
        message_id: Some("schema-check"),
        body,
        ..Inbound::default()
    }
    .parse(MAX_BODY)
    .is_ok()
}

/// Whether the published schema accepts `body` (which must be JSON).
fn schema_accepts(body: &[u8]) -> bool {
    let value: Value = serde_json::from_slice(body).unwrap();
    schema::request().is_valid(&value)
}

fn assert_agree(body: &[u8]) {
    let (code, schema) = (idem_accepts(body), schema_accepts(body));
    assert_eq!(
        code,
        schema,
        "idem {} but the schema {}: {}",
        if code { "accepts" } else { "refuses" },
        if schema { "accepts" } else { "refuses" },
        String::from_utf8_lossy(body)
    );
}

/// Invariant: on every edge of every field (lengths in ASCII, NUL, signs,
/// the i64 range, types, missing and unknown fields, null description) the
/// schema and idem's validation say the same.
#[test]
fn the_request_schema_accepts_what_idem_accepts_on_every_edge() {
    let long = |n: usize| "a".repeat(n);
    let mut bodies: Vec<Value> = vec![
        json!({"account_id": "acc_1", "amount": 1250, "currency": "EUR"}),
        json!({"account_id": "acc_1", "amount": 1, "currency": "EUR", "description": null}),
        json!({"account_id": "acc_1", "amount": 1, "currency": "EUR", "description": long(1024)}),
        json!({"account_id": "acc_1", "amount": 1, "currency": "EUR", "description": long(1025)}),
        json!({"account_id": "acc_1", "amount": 1, "currency": "EUR", "description": "a\u{0}b"}),
        json!({"account_id": "acc_1", "amount": 1, "currency": "EUR", "description": 7}),
        json!({"account_id": long(255), "amount": 1, "currency": "EUR"}),
        json!({"account_id": long(256), "amount": 1, "currency": "EUR"}),
        json!({"account_id": "", "amount": 1, "currency": "EUR"}),
        json!({"account_id": "a\u{0}", "amount": 1, "currency": "EUR"}),
        json!({"account_id": 17, "amount": 1, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": 0, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": -5, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": i64::MAX, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": u64::MAX, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": "12", "currency": "EUR"}),
        json!({"account_id": "acc", "amount": 1.5, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": null, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": 1, "currency": "eur"}),
        json!({"account_id": "acc", "amount": 1, "currency": "EURO"}),
        json!({"account_id": "acc", "amount": 1, "currency": "E1R"}),
        json!({"account_id": "acc", "amount": 1, "currency": "ÉUR"}),
        json!({"account_id": "acc", "amount": 1}),
        json!({"amount": 1, "currency": "EUR"}),
        json!({"account_id": "acc", "amount": 1, "currency": "EUR", "extra": true}),
        json!([{"account_id": "acc", "amount": 1, "currency": "EUR"}]),
        json!("acc"),
        json!(null),
        json!({}),
    ];
    // A seeded walk over the same edges, combined.
    let mut rng = StdRng::seed_from_u64(16);
    let accounts = ["", "a", "acc\u{0}", &long(255), &long(256), "acc_9"];
    let amounts = [
        json!(0),
        json!(1),
        json!(-1),
        json!(i64::MAX),
        json!("1"),
        json!(2.5),
    ];
    let currencies = ["EUR", "eur", "EU", "EURO", "US$", "JPY"];
    for _ in 0..2000 {
        let mut body = json!({
            "account_id": accounts[rng.random_range(0..accounts.len())],
            "amount": amounts[rng.random_range(0..amounts.len())].clone(),
            "currency": currencies[rng.random_range(0..currencies.len())],
        });
        match rng.random_range(0..4) {
            0 => body["description"] = json!(long(rng.random_range(1000..1030))),
            1 => body["description"] = Value::Null,
            2 => body["unknown"] = json!(1),
            _ => {}
        }
        bodies.push(body);
    }
    let mut accepted = 0;
    for body in &bodies {
        let bytes = serde_json::to_vec(body).unwrap();
        assert_agree(&bytes);
        accepted += usize::from(idem_accepts(&bytes));
    }
    // The walk met both answers often.
    assert!(accepted > 20 && accepted < bodies.len() - 20, "{accepted}");
}

/// The two rules the schema states only in words (its description):
/// lengths in bytes, amounts as plain integers. A validator passes these;
/// idem refuses them (quarantine `schema`), as the description says.
#[test]
fn what_the_schema_cannot_state_is_what_its_description_says() {
    let text = std::fs::read_to_string(schema::path(schema::REQUEST)).unwrap();
    assert!(
        text.contains("UTF-8 bytes") && text.contains("1250.0"),
        "{text}"
    );
    for body in [
        // 200 characters, 400 bytes.
        json!({"account_id": "é".repeat(200), "amount": 1, "currency": "EUR"}),
        json!({"account_id": "a", "amount": 1, "currency": "EUR", "description": "é".repeat(600)}),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(schema_accepts(&bytes) && !idem_accepts(&bytes));
    }
    for raw in [
        br#"{"account_id":"a","amount":1250.0,"currency":"EUR"}"#.as_slice(),
        br#"{"account_id":"a","amount":1.25e3,"currency":"EUR"}"#.as_slice(),
    ] {
        assert!(schema_accepts(raw) && !idem_accepts(raw));
    }
}

/// A final event of `state` as the settle writes it (also for `asyncapi`).
pub(crate) fn event(state: OutboxState) -> ResultEvent {
    let succeeded = state == OutboxState::Succeeded;
    ResultEvent {
        id: 1,
        kind: EventKind::Settled,
        outbox_id: 1,
        scope: "shop-a".into(),
        message_id: "order-17".into(),
        reference_id: idem_message::reference_id("shop-a", "order-17"),
        account_id: "acc_1".into(),
        amount: 1250,
        currency: "EUR".into(),
        state,
        provider_charge_id: succeeded.then(|| "ch_1".into()),
        result: match state {
            OutboxState::Succeeded => Some(json!({"id": "ch_1", "status": "succeeded"})),
            OutboxState::Declined => Some(json!({"status": "declined", "code": "card_declined"})),
            _ => None,
        },
        error: (state == OutboxState::Dead).then(|| "provider rejected the charge".into()),
        settled_at: Utc::now(),
        traceparent: None,
        reply_to: None,
        correlation_id: None,
        attempts: 0,
    }
}

/// A way to break a valid result body.
type Break = fn(&mut Value);

/// Invariant: the body idem emits for each final state is one the result
/// schema accepts; a body that breaks the contract (an open state, no
/// event id, a success without its charge, another version) is refused,
/// so the check can fail.
#[test]
fn the_result_schema_accepts_every_final_state_idem_emits() {
    for state in [
        OutboxState::Succeeded,
        OutboxState::Declined,
        OutboxState::Dead,
    ] {
        let body = serde_json::to_vec(&ResultBody::of(&event(state))).unwrap();
        schema::assert_result_event(&body);
    }
    let good = serde_json::to_value(ResultBody::of(&event(OutboxState::Succeeded))).unwrap();
    let broken: [(&str, Break); 5] = [
        ("open state", |v| v["state"] = json!("pending")),
        ("no event id", |v| {
            v.as_object_mut().unwrap().remove("event_id");
        }),
        ("not a uuid", |v| v["reference_id"] = json!("r-1")),
        ("success without charge", |v| v["charge_id"] = Value::Null),
        ("version 2", |v| v["version"] = json!(2)),
    ];
    for (what, breaks) in broken {
        let mut v = good.clone();
        breaks(&mut v);
        assert!(!schema::result().is_valid(&v), "{what} passed: {v}");
    }
    // Unknown fields are a compatible change: consumers must accept them.
    let mut newer = good;
    newer["added_later"] = json!(1);
    assert!(schema::result().is_valid(&newer));
}
