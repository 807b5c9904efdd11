//! A raw delivery no library reads, quarantined: its reason, what of its
//! properties could be read (as JSON, bytes that are not UTF-8 escaped), the
//! content header's raw bytes, and the body's prefix, size and digest.

use idem_store::quarantine::{self, Quarantined, Salvaged};
use serde_json::{Map, Value, json};
use sqlx::{Acquire, PgConnection};

use super::Origin;
use super::convert::shown;
use crate::decision::Decision;
use crate::raw::properties::properties_beside_headers;
use crate::raw::{RawDelivery, RawField, RawProperties, RawTable};

/// A property or header key is not UTF-8 (lapin refuses the whole frame).
pub const CODE_NOT_UTF8: &str = "not_utf8";
/// The content header is past a bound of idem's reader: nested too deep,
/// too many entries, too many bytes.
pub const CODE_HEADER_LIMITS: &str = "header_limits";
/// The content header does not parse: an unknown field type, a length that
/// runs past the frame, bytes after the last property.
pub const CODE_MALFORMED_HEADER: &str = "malformed_header";
/// The code the message contract uses for a body over the limit.
pub(super) const CODE_TOO_LARGE: &str = "too_large";

/// Header nesting kept in the JSON; the raw bytes keep the rest.
const JSON_DEPTH: usize = 16;

/// Quarantine `d` raw, behind a savepoint. If the database refuses even
/// that row for its data, a minimal one (no properties JSON) is tried; if
/// that fails too the message is [`Decision::Unrecordable`].
pub async fn quarantine_raw(
    conn: &mut PgConnection,
    d: &RawDelivery,
    origin: Origin,
    code: &'static str,
    reason: &str,
) -> Result<Decision, sqlx::Error> {
    // Headers that do not parse are skipped by their length, so that the
    // other properties (the message_id first) are kept.
    let beside = match &d.properties {
        Ok(_) => None,
        Err(_) => properties_beside_headers(&d.header),
    };
    let mut properties = match (&d.properties, &beside) {
        (Ok(p), _) => properties_json(p, d.redelivered),
        (Err(e), Some(p)) => {
            let mut json = properties_json(p, d.redelivered);
            json["headers"] = json!({ "unparsed": e.to_string() });
            json
        }
        (Err(e), None) => json!({ "unparsed": e.to_string(), "redelivered": d.redelivered }),
    };
    let reason = if origin == Origin::DeadLetters {
        let death = dead_letter(d);
        let why = death["reason"].as_str().unwrap_or("unknown").to_owned();
        properties["dead_letter"] = death;
        format!("{reason} (found in the dead-letter queue; the broker's reason: {why})")
    } else {
        reason.to_owned()
    };
    tracing::warn!(code, %reason, queue_origin = ?origin, header_bytes = d.header.len(), body_bytes = d.body_size, "quarantining a message no AMQP library reads, with its raw bytes");
    let message_id = d
        .properties
        .as_ref()
        .ok()
        .or(beside.as_ref())
        .and_then(|p| p.message_id.clone());
    let minimal = json!({ "omitted": "the database refused the properties JSON" });
    for props in [&properties, &minimal] {
        let row = Salvaged {
            row: Quarantined {
                reason_code: code,
                reason: &reason,
                message_id: message_id.as_deref(),
                properties: props,
                body: &d.body,
            },
            header: &d.header,
            header_size: d.header.len(),
            body_size: d.body_size,
            body_sha256: d.body_sha256,
        };
        let mut savepoint = conn.begin().await?;
        match quarantine::insert_salvaged(&mut savepoint, &row).await {
            Ok(_) => {
                savepoint.commit().await?;
                return Ok(Decision::Quarantined { code });
            }
            Err(e) if refused_data(&e) => {
                savepoint.rollback().await?;
                tracing::error!(error = %e, "quarantine refused a raw row");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Decision::Unrecordable {
        error: "the database refused even a minimal quarantine row".into(),
    })
}

fn refused_data(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| ["22", "23", "54"].iter().any(|class| c.starts_with(class))))
}

/// The properties as JSON for an operator: text where the bytes are UTF-8
/// (NUL replaced: jsonb cannot hold it), else the bytes escaped (`\xNN`)
/// and the field named in `not_utf8`.
pub fn properties_json(p: &RawProperties, redelivered: bool) -> Value {
    let mut not_utf8 = Vec::new();
    let mut text = |name: &str, v: &Option<Vec<u8>>| match v {
        None => Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => Value::String(s.replace('\0', "\u{FFFD}")),
            Err(_) => {
                not_utf8.push(Value::String(name.to_owned()));
                Value::String(shown(bytes))
            }
        },
    };
    let mut out = json!({
        "message_id": text("message_id", &p.message_id),
        "app_id": text("app_id", &p.app_id),
        "user_id": text("user_id", &p.user_id),
        "content_type": text("content_type", &p.content_type),
        "content_encoding": text("content_encoding", &p.content_encoding),
        "reply_to": text("reply_to", &p.reply_to),
        "correlation_id": text("correlation_id", &p.correlation_id),
        "type": text("type", &p.kind),
        "expiration": text("expiration", &p.expiration),
        "cluster_id": text("cluster_id", &p.cluster_id),
        "timestamp": p.timestamp.map(Value::from).unwrap_or(Value::Null),
        "delivery_mode": p.delivery_mode.map(Value::from).unwrap_or(Value::Null),
        "priority": p.priority.map(Value::from).unwrap_or(Value::Null),
        "redelivered": redelivered,
        "headers": p.headers.as_ref().map(|h| table_json(h, 0)).unwrap_or(Value::Null),
    });
    out["not_utf8"] = Value::Array(not_utf8);
    out
}

fn key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.replace('\0', "\u{FFFD}"),
        Err(_) => shown(bytes),
    }
}

fn table_json(t: &RawTable, depth: usize) -> Value {
    if depth >= JSON_DEPTH {
        return Value::String("<nested too deep: see raw_header>".into());
    }
    Value::Object(
        t.0.iter()
            .map(|(k, v)| (key(k), field_json(v, depth + 1)))
            .collect::<Map<_, _>>(),
    )
}

fn field_json(v: &RawField, depth: usize) -> Value {
    match v {
        RawField::Bool(b) => Value::Bool(*b),
        RawField::I8(n) => json!(n),
        RawField::U8(n) => json!(n),
        RawField::I16(n) => json!(n),
        RawField::U16(n) => json!(n),
        RawField::I32(n) => json!(n),
        RawField::U32(n) => json!(n),
        RawField::I64(n) => json!(n),
        RawField::U64(n) | RawField::Timestamp(n) => json!(n),
        RawField::F32(f) => json!(f),
        RawField::F64(f) => json!(f),
        RawField::Decimal { scale, value } => json!({ "scale": scale, "value": value }),
        RawField::LongString(s) | RawField::Bytes(s) => Value::String(key(s)),
        RawField::Array(_) if depth >= JSON_DEPTH => {
            Value::String("<nested too deep: see raw_header>".into())
        }
        RawField::Array(items) => {
            Value::Array(items.iter().map(|i| field_json(i, depth + 1)).collect())
        }
        RawField::Table(t) => table_json(t, depth),
        RawField::Void => Value::Null,
    }
}

/// The broker's account of why a message was dead-lettered: the first
/// `x-death` entry (the most recent), as far as the header parsed.
fn dead_letter(d: &RawDelivery) -> Value {
    let entry = d
        .properties
        .as_ref()
        .ok()
        .and_then(|p| p.headers.as_ref())
        .and_then(|h| h.0.iter().find(|(k, _)| k == b"x-death"))
        .and_then(|(_, v)| match v {
            RawField::Array(items) => items.first(),
            _ => None,
        });
    match entry {
        Some(RawField::Table(t)) => {
            let get = |name: &[u8]| {
                t.0.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| field_json(v, 1))
            };
            json!({
                "reason": get(b"reason"),
                "queue": get(b"queue"),
                "count": get(b"count"),
            })
        }
        _ => json!({ "reason": Value::Null }),
    }
}
