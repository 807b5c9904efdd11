//! Inbox keys as operators see them: the key, and the conflicting
//! deliveries recorded against it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// `scope:message_id`, split at the first `:`.
pub fn parse_key(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((scope, id)) if !scope.is_empty() && !id.is_empty() => {
            Ok((scope.to_owned(), id.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is neither a row id, a reference id (UUID) nor scope:message_id \
             (the default scope is `default`, e.g. default:order-17)"
        )),
    }
}

/// An inbox key.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct InboxRow {
    /// Dedup scope.
    pub scope: String,
    /// Producer key.
    pub message_id: String,
    /// SHA-256 of (account_id, amount, currency), hex.
    pub fingerprint: String,
    /// Later deliveries absorbed.
    pub duplicates: i32,
    /// Later deliveries with another payload.
    pub conflicts: i32,
    /// First seen.
    pub received_at: DateTime<Utc>,
    /// Last seen.
    pub last_seen_at: DateTime<Utc>,
}

/// The inbox key `(scope, message_id)`, if recorded (and not yet expired).
pub async fn find_inbox(
    conn: &mut PgConnection,
    scope: &str,
    message_id: &str,
) -> Result<Option<InboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT scope, message_id, encode(fingerprint, 'hex') AS fingerprint, duplicates,
                conflicts, received_at, last_seen_at
         FROM inbox WHERE scope = $1 AND message_id = $2",
    )
    .bind(scope)
    .bind(message_id)
    .fetch_optional(conn)
    .await
}

/// A key conflict: the same key with another payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictRow {
    /// Row id.
    pub id: i64,
    /// Dedup scope of the key.
    pub scope: String,
    /// Producer key.
    pub message_id: String,
    /// The fingerprint first recorded, hex.
    pub stored_fingerprint: String,
    /// The conflicting delivery's fingerprint, hex.
    pub received_fingerprint: String,
    /// The conflicting body, as text (lossy).
    pub body: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// The columns of a [`RawConflict`].
pub(super) const CONFLICT_COLUMNS: &str = "id, scope, message_id, \
     encode(stored_fingerprint, 'hex'), encode(received_fingerprint, 'hex'), body, received_at";

/// A key conflict as read: its body still bytes.
pub(super) type RawConflict = (i64, String, String, String, String, Vec<u8>, DateTime<Utc>);

impl From<RawConflict> for ConflictRow {
    fn from(raw: RawConflict) -> Self {
        let (id, scope, message_id, stored, received, body, received_at) = raw;
        Self {
            id,
            scope,
            message_id,
            stored_fingerprint: stored,
            received_fingerprint: received,
            body: String::from_utf8_lossy(&body).into_owned(),
            received_at,
        }
    }
}

/// Conflicts recorded for `(scope, message_id)`, oldest first.
pub async fn conflicts_of(
    conn: &mut PgConnection,
    scope: &str,
    message_id: &str,
) -> Result<Vec<ConflictRow>, sqlx::Error> {
    let rows: Vec<RawConflict> = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM key_conflict WHERE scope = $1 AND message_id = $2 \
         ORDER BY id"
    ))
    .bind(scope)
    .bind(message_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ConflictRow::from).collect())
}
