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
    /// The raw body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// When an operator last replayed it.
    pub replayed_at: Option<DateTime<Utc>>,
    /// How often it was replayed.
    pub replay_count: i32,
}

const QUARANTINE_COLUMNS: &str =
    "id, reason_code, reason, message_id, properties, body, received_at, replayed_at, replay_count";

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
