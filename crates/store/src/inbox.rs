//! The inbox: one row per (scope, message_id). Recording a message is the
//! dedup decision, made atomically by the primary key.

use idem_message::ChargeRequest;
use sqlx::PgConnection;

use crate::outbox::{self, OutboxState};

/// What recording a valid message decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// First of its key: an outbox row was written in the same transaction.
    New {
        /// The new outbox row.
        outbox_id: i64,
    },
    /// Same key, same fingerprint: absorbed, never charged again.
    Duplicate {
        /// The outbox row's state and stored result, if the outbox row still
        /// exists (it may have been removed by retention).
        existing: Option<(OutboxState, Option<serde_json::Value>)>,
    },
    /// Same key, other fingerprint: recorded as a key conflict, never charged.
    Conflict,
}

/// Record `request` in the inbox and, for a new key, the outbox. Run inside the
/// caller's transaction: the inbox row, the outbox row (or the conflict row) and
/// the caller's later ack decision stand or fall together.
#[tracing::instrument(skip_all, fields(scope = %request.scope, message_id = %request.message_id), err(level = "warn"))]
pub async fn record(
    conn: &mut PgConnection,
    request: &ChargeRequest,
    raw_body: &[u8],
) -> Result<Recorded, sqlx::Error> {
    // One round trip decides new vs seen: `xmax = 0` is true only for a freshly
    // inserted row. A concurrent insert of the same key waits on the row lock
    // and then takes the DO UPDATE branch, so exactly one transaction sees "new".
    let (inserted, stored): (bool, Vec<u8>) = sqlx::query_as(
        "INSERT INTO inbox AS i (scope, message_id, fingerprint) VALUES ($1, $2, $3)
         ON CONFLICT (scope, message_id) DO UPDATE SET
             duplicates   = i.duplicates + (i.fingerprint =  EXCLUDED.fingerprint)::int,
             conflicts    = i.conflicts  + (i.fingerprint <> EXCLUDED.fingerprint)::int,
             last_seen_at = now()
         RETURNING (xmax = 0) AS inserted, fingerprint",
    )
    .bind(&request.scope)
    .bind(&request.message_id)
    .bind(&request.fingerprint[..])
    .fetch_one(&mut *conn)
    .await?;

    if inserted {
        let outbox_id = outbox::enqueue(conn, request).await?;
        return Ok(Recorded::New { outbox_id });
    }
    if stored != request.fingerprint {
        insert_conflict(conn, request, &stored, raw_body).await?;
        return Ok(Recorded::Conflict);
    }
    let existing = outbox::state_of(conn, &request.scope, &request.message_id).await?;
    Ok(Recorded::Duplicate { existing })
}

async fn insert_conflict(
    conn: &mut PgConnection,
    request: &ChargeRequest,
    stored: &[u8],
    raw_body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO key_conflict (scope, message_id, stored_fingerprint, received_fingerprint, body)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&request.scope)
    .bind(&request.message_id)
    .bind(stored)
    .bind(&request.fingerprint[..])
    .bind(raw_body)
    .execute(conn)
    .await?;
    Ok(())
}
