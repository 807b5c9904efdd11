//! Quarantine: bad input kept with its reason, written in the same
//! transaction that decided, so an acked message is never lost.
//!
//! What a row keeps is bounded whatever the producer sent ([`Quarantined::kept`]):
//! at most [`MAX_KEPT_BODY`] bytes of the body with the whole body's size and
//! SHA-256, at most [`MAX_KEPT_PROPERTIES`] bytes of properties JSON and
//! [`MAX_KEPT_REASON`] bytes of reason; a row that lost bytes says so
//! (`body_truncated`, `properties_truncated`) and cannot be replayed.

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// Most body bytes a quarantine row keeps (64 KiB, the default
/// `IDEM_MAX_BODY_BYTES`), for every reason: a huge body under a raised limit
/// that is not JSON is as hostile as one over it. A body this long or shorter
/// is kept whole, so a message a small limit refused can be replayed once the
/// limit is raised; a longer one keeps this prefix, its size and its SHA-256,
/// enough to recognise it, never enough to fill the database.
pub const MAX_KEPT_BODY: usize = 64 * 1024;
/// Most bytes of properties JSON a row keeps; over it, the headers are
/// omitted and long strings cut (a producer's header table can be huge).
pub const MAX_KEPT_PROPERTIES: usize = 64 * 1024;
/// Most bytes of reason a row keeps: a reason may quote the input (a JSON
/// parser's error quotes the offending string whole).
pub const MAX_KEPT_REASON: usize = 4 * 1024;
/// Most bytes of a raw content header a row keeps ([`Salvaged::header`]):
/// the raw reader's own bound on a header it parses, so any header it read
/// whole is kept whole.
pub const MAX_KEPT_HEADER: usize = 128 * 1024;
/// Longest string, and most top-level keys, kept in a properties summary.
const SUMMARY_STRING: usize = 1024;
const SUMMARY_KEYS: usize = 32;

/// A message that failed validation, as it arrived.
#[derive(Debug, Clone)]
pub struct Quarantined<'a> {
    /// Stable code, e.g. `not_json`.
    pub reason_code: &'a str,
    /// Human reason.
    pub reason: &'a str,
    /// The raw `message_id` property bytes, when present.
    pub message_id: Option<&'a [u8]>,
    /// AMQP properties and headers as JSON.
    pub properties: &'a serde_json::Value,
    /// The raw body, whole: [`Quarantined::kept`] bounds what is stored.
    pub body: &'a [u8],
}

/// What a quarantine row stores of a [`Quarantined`] message.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept<'a> {
    /// The reason, sanitised of NUL and cut to [`MAX_KEPT_REASON`].
    pub reason: String,
    /// The body, or its first [`MAX_KEPT_BODY`] bytes.
    pub body: &'a [u8],
    /// The whole body's size in bytes.
    pub body_size: i64,
    /// SHA-256 of the whole body.
    pub body_sha256: [u8; 32],
    /// `body` is a prefix.
    pub body_truncated: bool,
    /// The properties, or a summary of them within [`MAX_KEPT_PROPERTIES`].
    pub properties: Cow<'a, Value>,
    /// `properties` is a summary.
    pub properties_truncated: bool,
}

impl<'a> Quarantined<'a> {
    /// What to store: bounded, with the digest of the whole body.
    pub fn kept(&self) -> Kept<'a> {
        let body_truncated = self.body.len() > MAX_KEPT_BODY;
        let size = json_size(self.properties);
        let (properties, properties_truncated) = if size > MAX_KEPT_PROPERTIES {
            (Cow::Owned(summarise(self.properties, size)), true)
        } else {
            (Cow::Borrowed(self.properties), false)
        };
        Kept {
            reason: clip(&sanitize(self.reason), MAX_KEPT_REASON),
            body: &self.body[..self.body.len().min(MAX_KEPT_BODY)],
            body_size: i64::try_from(self.body.len()).unwrap_or(i64::MAX),
            body_sha256: Sha256::digest(self.body).into(),
            body_truncated,
            properties,
            properties_truncated,
        }
    }
}

/// A message idem's own reader took off a queue because no AMQP library reads
/// its content header (`crates/inbox/src/salvage`): the row as for any
/// quarantined message, plus the header's bytes, and the body's size and
/// digest as the reader counted them (it keeps only a prefix in memory).
#[derive(Debug, Clone)]
pub struct Salvaged<'a> {
    /// The row; its `body` is the prefix the reader kept.
    pub row: Quarantined<'a>,
    /// The content header payload as received (at most
    /// [`MAX_KEPT_HEADER`] bytes are stored).
    pub header: &'a [u8],
    /// The whole content header's size.
    pub header_size: usize,
    /// The whole body's size.
    pub body_size: u64,
    /// SHA-256 of the whole body.
    pub body_sha256: [u8; 32],
}

/// Store a salvaged message, bounded like [`insert`]; returns its id.
pub async fn insert_salvaged(
    conn: &mut PgConnection,
    s: &Salvaged<'_>,
) -> Result<i64, sqlx::Error> {
    let kept = s.row.kept();
    let body_truncated =
        kept.body_truncated || u64::try_from(kept.body.len()).unwrap_or(u64::MAX) < s.body_size;
    let header = &s.header[..s.header.len().min(MAX_KEPT_HEADER)];
    sqlx::query_scalar(
        "INSERT INTO quarantine (reason_code, reason, message_id, properties, body,
                                 body_size, body_sha256, body_truncated, properties_truncated,
                                 raw_header, raw_header_size)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(s.row.reason_code)
    .bind(&kept.reason)
    .bind(s.row.message_id)
    .bind(&*kept.properties)
    .bind(kept.body)
    .bind(i64::try_from(s.body_size).unwrap_or(i64::MAX))
    .bind(&s.body_sha256[..])
    .bind(body_truncated)
    .bind(kept.properties_truncated)
    .bind(header)
    .bind(i32::try_from(s.header_size).unwrap_or(i32::MAX))
    .fetch_one(conn)
    .await
}

/// Store a quarantined message, bounded ([`Quarantined::kept`]); returns its id.
pub async fn insert(conn: &mut PgConnection, q: &Quarantined<'_>) -> Result<i64, sqlx::Error> {
    let kept = q.kept();
    sqlx::query_scalar(
        "INSERT INTO quarantine (reason_code, reason, message_id, properties, body,
                                 body_size, body_sha256, body_truncated, properties_truncated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(q.reason_code)
    .bind(&kept.reason)
    .bind(q.message_id)
    .bind(&*kept.properties)
    .bind(kept.body)
    .bind(kept.body_size)
    .bind(&kept.body_sha256[..])
    .bind(kept.body_truncated)
    .bind(kept.properties_truncated)
    .fetch_one(conn)
    .await
}

/// The serialised size of `value`, counted without building the text.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Over-large properties, summarised: the first top-level fields with
/// strings cut, nested values (the headers) omitted, and a `truncated` note.
fn summarise(value: &Value, size: usize) -> Value {
    let mut out = Map::new();
    if let Value::Object(map) = value {
        for (k, v) in map.iter().take(SUMMARY_KEYS) {
            let v = match v {
                Value::String(s) => Value::String(clip(s, SUMMARY_STRING)),
                Value::Array(_) | Value::Object(_) => Value::String("<omitted>".to_owned()),
                scalar => scalar.clone(),
            };
            out.insert(clip(k, SUMMARY_STRING), v);
        }
    }
    out.insert(
        "truncated".to_owned(),
        Value::String(format!(
            "{size} bytes of properties JSON, over {MAX_KEPT_PROPERTIES}: nested values omitted, strings cut to {SUMMARY_STRING} bytes"
        )),
    );
    Value::Object(out)
}

/// At most `max` bytes of `text` (cut on a character boundary), with a note
/// of the whole length where cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// PostgreSQL text cannot hold NUL; a reason may quote the input.
pub fn sanitize(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// [`sanitize`] for JSON (jsonb cannot hold `\u0000` either): every string
/// and key. What the provider answered is stored, so it must be storable
/// whatever it contains; a NUL would otherwise fail a whole group settle.
pub fn sanitize_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(sanitize(s)),
        Value::Array(items) => Value::Array(items.iter().map(sanitize_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (sanitize(k), sanitize_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(properties: &'a Value, body: &'a [u8]) -> Quarantined<'a> {
        Quarantined {
            reason_code: "not_json",
            reason: "body is not JSON",
            message_id: Some(b"m-1"),
            properties,
            body,
        }
    }

    #[test]
    fn a_body_within_the_bound_is_kept_whole_with_its_digest() {
        let props = serde_json::json!({"message_id": "m-1"});
        let kept = message(&props, b"{not json").kept();
        assert_eq!(kept.body, b"{not json");
        assert_eq!(kept.body_size, 9);
        assert!(!kept.body_truncated && !kept.properties_truncated);
        // sha256("{not json"), computed independently (sha256sum).
        assert_eq!(
            hex::encode(kept.body_sha256),
            "92072df399cb74703f8e86f450d552bc0bb01eeeb98a90985a1b7772c8fd0016"
        );
        assert_eq!(&*kept.properties, &props);
    }

    #[test]
    fn a_body_past_the_bound_keeps_a_prefix_its_size_and_digest() {
        let props = serde_json::json!({});
        let body = vec![b'x'; 3 * MAX_KEPT_BODY + 7];
        let kept = message(&props, &body).kept();
        assert_eq!(kept.body.len(), MAX_KEPT_BODY);
        assert!(body.starts_with(kept.body));
        assert_eq!(kept.body_size, body.len() as i64);
        assert_eq!(kept.body_sha256, <[u8; 32]>::from(Sha256::digest(&body)));
        assert!(kept.body_truncated);
        let exact = vec![b'x'; MAX_KEPT_BODY];
        assert!(!message(&props, &exact).kept().body_truncated);
    }

    #[test]
    fn huge_properties_and_reasons_are_summarised_within_bounds() {
        let headers: Map<String, Value> = (0..5_000)
            .map(|i| (format!("h{i}"), Value::String("v".repeat(100))))
            .collect();
        let props = serde_json::json!({
            "message_id": "m-1",
            "app_id": "a".repeat(10_000),
            "headers": headers,
        });
        let reason = "r".repeat(1 << 20);
        let q = Quarantined {
            reason: &reason,
            ..message(&props, b"")
        };
        let kept = q.kept();
        assert!(kept.properties_truncated);
        assert!(json_size(&kept.properties) <= MAX_KEPT_PROPERTIES);
        assert_eq!(kept.properties["message_id"], "m-1");
        assert_eq!(kept.properties["headers"], "<omitted>");
        assert!(kept.properties["truncated"].is_string());
        assert!(
            kept.reason.len() <= MAX_KEPT_REASON + 32,
            "{}",
            kept.reason.len()
        );
        assert!(
            kept.reason
                .ends_with(&format!("({} bytes in all)", 1 << 20))
        );
    }

    #[test]
    fn clipping_never_splits_a_character() {
        let text = "é".repeat(10);
        let cut = clip(&text, 5);
        assert!(cut.starts_with("éé…"), "{cut}");
        assert_eq!(clip("short", 5), "short");
    }

    #[test]
    fn nul_never_reaches_the_database() {
        let v = serde_json::json!({"id": "ch_\0", "a\0": [1, "x\0y"]});
        let clean = sanitize_json(&v).to_string();
        assert!(
            !clean.contains("\\u0000") && !clean.contains('\0'),
            "{clean}"
        );
        assert!(v.to_string().contains("\\u0000"), "the input has them");
        assert_eq!(
            sanitize_json(&serde_json::json!({"n": 1})),
            serde_json::json!({"n": 1})
        );
    }
}
