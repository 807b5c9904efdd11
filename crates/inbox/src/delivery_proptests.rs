//! Properties of reading a lapin delivery, over any properties and headers the
//! client library can hand us.
//!
//! Whatever subset of properties is set and whatever the header table holds
//! (any keys, any value types, tables and arrays nested a few levels), the
//! reader must not panic, must pass the properties to the contract unchanged
//! (so the decision is `idem_message`'s, tested there), and must produce
//! quarantine JSON that PostgreSQL's `jsonb` accepts: no NUL, bounded depth.

use std::collections::BTreeMap;

use idem_message::{Inbound, ReplyToAllow, ScopeAuth};
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

use super::{MAX_DEPTH, inbound, properties_json};
use crate::admission::Admission;
use crate::decision::Incoming;

const VALID_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Any string a short string can hold (at most 255 bytes), NUL and controls included.
fn short() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        3 => "[a-z0-9-]{1,16}",
        2 => any::<String>(),
        1 => "[\\x00-\\x1f]{0,8}",
        1 => (250..=255usize).prop_map(|n| "k".repeat(n)),
    ]
    .prop_filter_map("over 255 bytes", |s| ShortString::try_new(s).ok())
}

fn header_key() -> impl Strategy<Value = ShortString> {
    prop_oneof![4 => short(), 1 => Just("traceparent".into())]
}

fn scalar() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        short().prop_map(AMQPValue::ShortString),
        vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        Just(AMQPValue::LongString(LongString::from(VALID_TRACE))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ]
}

/// Any header value, with tables and arrays nested up to four levels.
fn value() -> impl Strategy<Value = AMQPValue> {
    scalar().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            btree_map(header_key(), inner, 0..6)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

fn headers() -> impl Strategy<Value = FieldTable> {
    btree_map(header_key(), value(), 0..8).prop_map(FieldTable::from)
}

/// Every property optional, each set or not independently.
fn properties() -> impl Strategy<Value = BasicProperties> {
    let s = || proptest::option::of(short());
    (
        (s(), s(), proptest::option::of(headers()), s(), s()),
        (s(), s(), s(), s(), s(), s()),
        proptest::option::of(any::<(u8, u8, u64)>()),
    )
        .prop_map(|(strings, more, numbers)| {
            let (content_type, encoding, headers, correlation_id, reply_to) = strings;
            let (expiration, message_id, kind, user_id, app_id, cluster_id) = more;
            let mut p = BasicProperties::default();
            p = set(p, content_type, BasicProperties::with_content_type);
            p = set(p, encoding, BasicProperties::with_content_encoding);
            p = set(p, correlation_id, BasicProperties::with_correlation_id);
            p = set(p, reply_to, BasicProperties::with_reply_to);
            p = set(p, expiration, BasicProperties::with_expiration);
            p = set(p, message_id, BasicProperties::with_message_id);
            p = set(p, kind, BasicProperties::with_type);
            p = set(p, user_id, BasicProperties::with_user_id);
            p = set(p, app_id, BasicProperties::with_app_id);
            p = set(p, cluster_id, BasicProperties::with_cluster_id);
            if let Some(h) = headers {
                p = p.with_headers(h);
            }
            if let Some((mode, priority, timestamp)) = numbers {
                p = p
                    .with_delivery_mode(mode)
                    .with_priority(priority)
                    .with_timestamp(timestamp);
            }
            p
        })
}

type With = fn(BasicProperties, ShortString) -> BasicProperties;

fn set(p: BasicProperties, value: Option<ShortString>, with: With) -> BasicProperties {
    match value {
        Some(v) => with(p, v),
        None => p,
    }
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(br#"{"account_id":"acc_1","amount":1250,"currency":"EUR"}"#.to_vec()),
        vec(any::<u8>(), 0..128),
    ]
}

/// Containers nested in a JSON value (a scalar is 0).
fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

proptest! {
    /// Any properties, headers and body: reading and deciding never panics,
    /// the same delivery gets the same decision, and the reader passes the
    /// properties on unchanged, so the decision is the contract's own.
    #[test]
    fn any_delivery_gets_the_contracts_decision(
        p in properties(),
        body in body(),
        max in prop_oneof![Just(64 * 1024), 0..64usize],
    ) {
        let read = inbound(&p, &body);
        let decision = read.parse(max);
        prop_assert_eq!(&decision, &inbound(&p, &body).parse(max));
        let direct = Inbound {
            message_id: p.message_id().as_ref().map(ShortString::as_str),
            app_id: p.app_id().as_ref().map(ShortString::as_str),
            content_type: p.content_type().as_ref().map(ShortString::as_str),
            reply_to: p.reply_to().as_ref().map(ShortString::as_str),
            correlation_id: p.correlation_id().as_ref().map(ShortString::as_str),
            traceparent: read.traceparent,
            body: &body,
        };
        prop_assert_eq!(&decision, &direct.parse(max));
        let header = p.headers().as_ref().and_then(|h| h.inner().get("traceparent"));
        if let Some(AMQPValue::LongString(s)) = header
            && s.as_bytes() == VALID_TRACE.as_bytes()
        {
            prop_assert_eq!(read.traceparent, Some(VALID_TRACE));
        }
    }

    /// Admission under any scope rule is the contract's `parse_as` with the
    /// delivery's own `user_id`, but for a `reply_to` the rules refuse: that
    /// one is dropped, and exactly then `refused_reply_to` names it.
    #[test]
    fn admission_is_the_contract_plus_the_reply_rule(
        p in properties(),
        body in body(),
        mode in 0..3u8,
    ) {
        let auth = match mode {
            0 => ScopeAuth::Open,
            1 => ScopeAuth::UserId,
            _ => ScopeAuth::AllowList("a=*".parse().expect("a valid list")),
        };
        let limit = 64 * 1024;
        let admission = Admission::new(limit, auth.clone(), ReplyToAllow::default(), "idem.charges");
        let item = Incoming { properties: &p, body: &body, redelivered: false };
        let admitted = admission.admit(&item);
        let user_id = p.user_id().as_ref().map(ShortString::as_str);
        let contract = inbound(&p, &body).parse_as(limit, &auth, user_id);
        match (&admitted, contract) {
            (Ok(got), Ok(mut want)) => {
                let refused = admission.refused_reply_to(&item);
                prop_assert_eq!(refused.is_some(), want.reply_to.is_some() && got.reply_to.is_none());
                if refused.is_some() {
                    want.reply_to = None;
                }
                prop_assert_eq!(got, &want);
            }
            (Err(got), Err(want)) => prop_assert_eq!(got, &want),
            (got, want) => prop_assert!(false, "admitted {:?}, contract {:?}", got, want),
        }
    }

    /// Quarantine JSON for any delivery: no panic, no NUL anywhere, and nested
    /// no deeper than `MAX_DEPTH` below the top-level object.
    #[test]
    fn quarantine_json_fits_jsonb(p in properties(), redelivered in any::<bool>()) {
        let json = properties_json(&p, redelivered);
        prop_assert!(!has_nul(&json), "{}", json);
        prop_assert!(json_depth(&json) <= MAX_DEPTH + 1, "{}", json);
    }
}

/// A header nested far deeper than the cap is summarised at the cap, not
/// followed: quarantine JSON stays within `MAX_DEPTH + 1` containers.
#[test]
fn deep_headers_are_cut_at_the_cap() {
    let mut table = FieldTable::default();
    for level in 0..200 {
        let mut outer = BTreeMap::new();
        outer.insert(
            ShortString::from(format!("l{level}")),
            AMQPValue::FieldTable(table),
        );
        table = FieldTable::from(outer);
    }
    let json = properties_json(&BasicProperties::default().with_headers(table), false);
    assert_eq!(json_depth(&json), MAX_DEPTH + 1);
}
