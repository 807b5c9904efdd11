//! Sending a quarantined message back through the pipeline (`idem quarantine
//! replay`): its properties rebuilt from what quarantine kept, published to
//! the work queue with a publisher confirm. The consumer then decides it like
//! any delivery — recorded, deduplicated, or quarantined again.

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;

/// Header that marks a replayed delivery with the quarantine row it came from.
pub const REPLAYED_FROM: &str = "x-idem-replayed-from";

/// The AMQP properties of a quarantined message, rebuilt from its JSON
/// (`delivery::properties_json`) and its raw `message_id` bytes: message id,
/// app id (the scope), content type, reply-to, correlation id, timestamp and
/// headers (strings, booleans, numbers; nested tables and arrays as far as
/// kept), persistent, plus [`REPLAYED_FROM`].
pub fn properties(
    kept: &Value,
    raw_message_id: Option<&[u8]>,
    quarantine_id: i64,
) -> BasicProperties {
    let text = |key: &str| kept.get(key).and_then(Value::as_str);
    let mut props = BasicProperties::default().with_delivery_mode(2);
    // The raw bytes are the truth; the JSON copy was sanitised.
    let message_id = raw_message_id
        .and_then(|b| std::str::from_utf8(b).ok())
        .or_else(|| text("message_id"));
    if let Some(id) = message_id {
        props = props.with_message_id(id.into());
    }
    if let Some(app) = text("app_id") {
        props = props.with_app_id(app.into());
    }
    if let Some(ct) = text("content_type") {
        props = props.with_content_type(ct.into());
    }
    if let Some(r) = text("reply_to") {
        props = props.with_reply_to(r.into());
    }
    if let Some(c) = text("correlation_id") {
        props = props.with_correlation_id(c.into());
    }
    if let Some(ts) = kept.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(ts);
    }
    let mut headers = match kept.get("headers") {
        Some(Value::Object(map)) => table(map),
        _ => FieldTable::default(),
    };
    headers.insert(
        ShortString::from(REPLAYED_FROM),
        AMQPValue::LongLongInt(quarantine_id),
    );
    props.with_headers(headers)
}

fn table(map: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in map {
        if let Some(v) = value(v) {
            t.insert(ShortString::from(k.as_str()), v);
        }
    }
    t
}

fn value(v: &Value) -> Option<AMQPValue> {
    Some(match v {
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64()?),
        },
        // Numbers, timestamps, decimals and byte arrays were kept in their
        // serde form (`{"LongLongInt": 7}`): read them back exactly.
        Value::Object(map) if map.len() == 1 => {
            serde_json::from_value(v.clone()).unwrap_or_else(|_| AMQPValue::FieldTable(table(map)))
        }
        Value::Object(map) => AMQPValue::FieldTable(table(map)),
        Value::Array(items) => {
            AMQPValue::FieldArray(items.iter().filter_map(value).collect::<Vec<_>>().into())
        }
        Value::Null => AMQPValue::Void,
    })
}

/// Publish `body` with `props` to `queue` (default exchange) and wait for the
/// broker's confirm: `Ok` only once the broker has the message.
pub async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .context("publishing")?
        .await
        .context("waiting for the broker's confirm")?;
    anyhow::ensure!(confirm.is_ack(), "the broker refused the message (nack)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::properties_json;

    #[test]
    fn kept_properties_come_back() {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString("00-abc".into()));
        headers.insert("n".into(), AMQPValue::LongLongInt(7));
        let original = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_app_id("shop".into())
            .with_content_type("application/json".into())
            .with_reply_to("replies".into())
            .with_correlation_id("c-9".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        let kept = properties_json(&original, true);
        let back = properties(&kept, Some(b"m-1"), 42);
        assert_eq!(back.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(back.app_id().as_ref().map(|s| s.as_str()), Some("shop"));
        assert_eq!(
            back.reply_to().as_ref().map(|s| s.as_str()),
            Some("replies")
        );
        assert_eq!(
            back.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c-9")
        );
        assert_eq!(*back.timestamp(), Some(1_700_000_000));
        assert_eq!(*back.delivery_mode(), Some(2));
        let h = back.headers().clone().unwrap_or_default();
        let h = h.inner();
        assert_eq!(
            h.get("traceparent"),
            Some(&AMQPValue::LongString("00-abc".into()))
        );
        assert_eq!(h.get("n"), Some(&AMQPValue::LongLongInt(7)));
        assert_eq!(h.get(REPLAYED_FROM), Some(&AMQPValue::LongLongInt(42)));
    }

    #[test]
    fn a_missing_message_id_stays_missing() {
        let kept = serde_json::json!({"message_id": null, "headers": null});
        let back = properties(&kept, None, 1);
        assert!(back.message_id().is_none());
    }
}
