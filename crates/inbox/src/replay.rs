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

/// Why a quarantined message was not replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No such message (never kept, or retention deleted it).
    #[error("no quarantined message {0} (retention may have deleted it)")]
    Gone(i64),
    /// Quarantine kept too little of it to send it again.
    #[error("quarantined message {id} was not replayed: {why}")]
    NotReplayable {
        /// The message.
        id: i64,
        /// What is missing.
        why: String,
    },
    /// The database failed before anything was published.
    #[error("nothing was replayed: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker did not take it; the audit row says `failed`.
    #[error("replaying quarantined message {id} (audit #{audit_id}): {error:#}")]
    Publish {
        /// The message.
        id: i64,
        /// Its audit row.
        audit_id: i64,
        /// What the broker or the connection said.
        error: anyhow::Error,
    },
}

/// Replay quarantined message `id` to `queue` on the broker at `amqp_url`:
/// the audit row is committed first (`requested`: no replay is ever sent
/// without its record), then the message is published with a confirm,
/// then the row and its audit row say how it went. Returns the audit row.
/// The CLI's `idem quarantine replay` and the console share it.
pub async fn replay_kept(
    conn: &mut sqlx::PgConnection,
    amqp_url: &str,
    queue: &str,
    id: i64,
    action: &idem_store::admin::Action<'_>,
) -> Result<i64, ReplayError> {
    use idem_store::admin;
    let Some(r) = admin::find_quarantine(conn, id).await? else {
        return Err(ReplayError::Gone(id));
    };
    if let Some(why) = r.not_replayable() {
        return Err(ReplayError::NotReplayable { id, why });
    }
    let Some(audit_id) = admin::begin_replay(conn, id, queue, action).await? else {
        return Err(ReplayError::Gone(id));
    };
    let props = properties(&r.properties, r.message_id.as_deref(), id);
    let published = publish_once(amqp_url, queue, &r.body, props).await;
    let outcome = published.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    admin::finish_replay(
        conn,
        id,
        audit_id,
        outcome.as_ref().map(|_| ()).map_err(String::as_str),
    )
    .await?;
    published.map_err(|error| ReplayError::Publish {
        id,
        audit_id,
        error,
    })?;
    Ok(audit_id)
}

/// One connection, one confirmed publish, closed.
async fn publish_once(
    amqp_url: &str,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> anyhow::Result<()> {
    let connection = crate::connect_amqp(amqp_url).await?;
    let channel = connection.create_channel().await?;
    // Passive: the queue is the daemon's, declared with its type and
    // arguments; a replay must not declare it otherwise (the broker refuses
    // a second declaration that differs), only find it.
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("the work queue {queue:?} is not there (is IDEM_QUEUE right?)"))?;
    let sent = publish(&channel, queue, body, props).await;
    let _ = connection.close(200, "done".into()).await;
    sent
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
