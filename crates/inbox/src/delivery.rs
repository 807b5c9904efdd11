//! Reading a lapin delivery into the message contract's raw parts.

use idem_message::Inbound;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

/// The raw parts of `properties` and `body`, borrowed.
pub fn inbound<'a>(properties: &'a BasicProperties, body: &'a [u8]) -> Inbound<'a> {
    let traceparent = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent"))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        });
    Inbound {
        message_id: properties.message_id().as_ref().map(|s| s.as_str()),
        app_id: properties.app_id().as_ref().map(|s| s.as_str()),
        content_type: properties.content_type().as_ref().map(|s| s.as_str()),
        reply_to: properties.reply_to().as_ref().map(|s| s.as_str()),
        correlation_id: properties.correlation_id().as_ref().map(|s| s.as_str()),
        traceparent,
        body,
    }
}

/// The properties and headers as JSON, for quarantine. Strings are sanitised of
/// NUL (PostgreSQL `jsonb` cannot hold it); the raw key bytes are kept apart.
pub fn properties_json(properties: &BasicProperties, redelivered: bool) -> Value {
    let text = |s: Option<&str>| s.map(|s| Value::String(clean(s))).unwrap_or(Value::Null);
    json!({
        "message_id": text(properties.message_id().as_ref().map(|s| s.as_str())),
        "app_id": text(properties.app_id().as_ref().map(|s| s.as_str())),
        // Who the broker says published it: what the scope rules judged.
        "user_id": text(properties.user_id().as_ref().map(|s| s.as_str())),
        "content_type": text(properties.content_type().as_ref().map(|s| s.as_str())),
        "reply_to": text(properties.reply_to().as_ref().map(|s| s.as_str())),
        "correlation_id": text(properties.correlation_id().as_ref().map(|s| s.as_str())),
        "timestamp": properties.timestamp().map(Value::from).unwrap_or(Value::Null),
        "redelivered": redelivered,
        "headers": properties.headers().as_ref().map(|h| table_json(h, 0)).unwrap_or(Value::Null),
    })
}

fn clean(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Header nesting kept in quarantine; deeper levels are summarised, so a hostile
/// header can neither exhaust the stack nor exceed PostgreSQL's jsonb depth.
const MAX_DEPTH: usize = 16;

fn table_json(table: &FieldTable, depth: usize) -> Value {
    if depth >= MAX_DEPTH {
        return Value::String("<nested too deep>".into());
    }
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (clean(k.as_str()), value_json(v, depth + 1)))
            .collect::<Map<_, _>>(),
    )
}

fn value_json(value: &AMQPValue, depth: usize) -> Value {
    match value {
        AMQPValue::LongString(s) => Value::String(clean(&String::from_utf8_lossy(s.as_bytes()))),
        AMQPValue::ShortString(s) => Value::String(clean(s.as_str())),
        AMQPValue::FieldTable(t) => table_json(t, depth),
        AMQPValue::FieldArray(_) if depth >= MAX_DEPTH => Value::String("<nested too deep>".into()),
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| value_json(v, depth + 1))
                .collect(),
        ),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Void => Value::Null,
        // Numbers, timestamps, decimals, byte arrays: their serde form is exact.
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
#[path = "delivery_proptests.rs"]
mod proptests;
