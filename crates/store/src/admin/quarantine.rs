//! Quarantined messages as operators see them, and a replay's two halves
//! (its audit row committed before publishing, completed after).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::audit::{self, Action};

/// A quarantined message.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Stable reason code.
    pub reason_code: String,
    /// Human reason.
    pub reason: String,
    /// The raw `message_id` property.
    #[serde(skip)]
    pub message_id: Option<Vec<u8>>,
    /// AMQP properties and headers.
    pub properties: serde_json::Value,
    /// The raw body, or its first bytes when `body_truncated`.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The whole body's size in bytes.
    pub body_size: i64,
    /// SHA-256 of the whole body, lower-case hex.
    pub body_sha256: String,
    /// `body` holds only the first
    /// [`MAX_KEPT_BODY`](crate::quarantine::MAX_KEPT_BODY) bytes.
    pub body_truncated: bool,
    /// `properties` is a summary (headers omitted, strings cut).
    pub properties_truncated: bool,
    /// The content header's bytes as received, for a message no AMQP library
    /// could read (taken off the queue by idem's own reader); else `None`.
    #[serde(skip)]
    pub raw_header: Option<Vec<u8>>,
    /// The whole content header's size, when `raw_header` is kept.
    pub raw_header_size: Option<i32>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// When an operator last replayed it.
    pub replayed_at: Option<DateTime<Utc>>,
    /// How often it was replayed.
    pub replay_count: i32,
}

impl QuarantineRow {
    /// Why this message cannot be replayed as it arrived, if it cannot:
    /// quarantine kept only part of it, and a replay would publish another
    /// message under its key.
    pub fn not_replayable(&self) -> Option<String> {
        let mut lost = Vec::new();
        if self.body_truncated {
            lost.push(format!(
                "only the first {} of its {} body bytes",
                self.body.len(),
                self.body_size
            ));
        }
        if self.properties_truncated {
            lost.push("a summary of its properties (headers omitted)".to_owned());
        }
        if self.raw_header.is_some() {
            lost.push(
                "its content header only as raw bytes (no AMQP library reads them)".to_owned(),
            );
        }
        (!lost.is_empty()).then(|| {
            format!(
                "quarantine kept {}: it cannot be replayed; ask the producer to send it again",
                lost.join(" and ")
            )
        })
    }
}

/// Rows written before the digest columns existed (or by a previous release
/// during a rollout) hold the whole body: their size and digest are the
/// stored body's.
pub(super) const QUARANTINE_COLUMNS: &str = "id, reason_code, reason, message_id, properties, body,
     coalesce(body_size, octet_length(body)::int8) AS body_size,
     encode(coalesce(body_sha256, sha256(body)), 'hex') AS body_sha256,
     body_truncated, properties_truncated, raw_header, raw_header_size,
     received_at, replayed_at, replay_count";

/// Up to `limit` quarantined messages, newest first.
pub async fn list_quarantine(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<QuarantineRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Quarantined message `id`, if kept.
pub async fn find_quarantine(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<QuarantineRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}
/// The first half of a replay, before anything is published: the audit row
/// of quarantined message `id` (outcome `requested`), committed. Returns its
/// id, or `None` if the message is gone. Written first so that no replay is
/// ever published without its audit row.
pub async fn begin_replay(
    conn: &mut PgConnection,
    id: i64,
    queue: &str,
    action: &Action<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT id FROM quarantine WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let details = serde_json::json!({"queue": queue, "outcome": "requested"});
    let audit_id = audit::insert(
        &mut tx,
        action,
        "quarantine.replay",
        &format!("quarantine:{id}"),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(audit_id))
}

/// The second half: after the broker confirmed (`Ok`) or refused (`Err`) the
/// message, count the replay on the quarantine row and record the outcome
/// on the audit row `audit_id`, in one transaction.
pub async fn finish_replay(
    conn: &mut PgConnection,
    id: i64,
    audit_id: i64,
    published: Result<(), &str>,
) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let outcome = match published {
        Ok(()) => {
            let count: Option<i32> = sqlx::query_scalar(
                "UPDATE quarantine SET replayed_at = now(), replay_count = replay_count + 1
                 WHERE id = $1 RETURNING replay_count",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            serde_json::json!({"outcome": "published", "replay_count": count})
        }
        Err(e) => serde_json::json!({"outcome": "failed", "error": e}),
    };
    sqlx::query("UPDATE audit SET details = details || $2 WHERE id = $1")
        .bind(audit_id)
        .bind(outcome)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(body_truncated: bool, properties_truncated: bool) -> QuarantineRow {
        QuarantineRow {
            id: 1,
            reason_code: "too_large".to_owned(),
            reason: String::new(),
            message_id: None,
            properties: serde_json::Value::Null,
            body: vec![b'x'; 4],
            body_size: 10,
            body_sha256: "00".repeat(32),
            body_truncated,
            properties_truncated,
            raw_header: None,
            raw_header_size: None,
            received_at: Utc::now(),
            replayed_at: None,
            replay_count: 0,
        }
    }

    #[test]
    fn only_a_message_kept_whole_can_be_replayed() {
        assert_eq!(row(false, false).not_replayable(), None);
        let body = row(true, false).not_replayable().expect("truncated body");
        assert!(body.contains("first 4 of its 10 body bytes"), "{body}");
        let props = row(false, true).not_replayable().expect("summarised");
        assert!(props.contains("properties"), "{props}");
        let raw = QuarantineRow {
            raw_header: Some(vec![0, 60]),
            raw_header_size: Some(2),
            ..row(false, false)
        };
        let why = raw.not_replayable().expect("raw header");
        assert!(why.contains("raw bytes"), "{why}");
    }
}
