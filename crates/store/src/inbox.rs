//! The inbox: one row per (scope, message_id). Recording a message is the
//! dedup decision, made atomically by the primary key.

use idem_message::{ChargeRequest, fingerprint};
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
#[tracing::instrument(skip_all, fields(scope = %request.scope(), message_id = %request.message_id()), err(level = "warn"))]
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
    .bind(request.scope())
    .bind(request.message_id())
    .bind(&request.fingerprint()[..])
    .fetch_one(&mut *conn)
    .await?;

    if inserted {
        if let Some(outbox_id) = outbox::enqueue(conn, request).await? {
            return Ok(Recorded::New { outbox_id });
        }
        return recall(conn, request, raw_body).await;
    }
    if stored != request.fingerprint() {
        insert_conflict(conn, request, &stored, raw_body).await?;
        return Ok(Recorded::Conflict);
    }
    let existing = outbox::state_of(conn, request.reference_id()).await?;
    Ok(Recorded::Duplicate { existing })
}

/// The inbox had forgotten this key, but its outbox row is still there
/// (retention deletes a settled key before its outbox row by default; see
/// `retention::delete_inbox_keys`): the message is not new. It is judged
/// against the payload the outbox row was created with, and the key just
/// re-inserted gets that payload's fingerprint back, so later copies are
/// judged against what was charged rather than against this copy.
async fn recall(
    conn: &mut PgConnection,
    request: &ChargeRequest,
    raw_body: &[u8],
) -> Result<Recorded, sqlx::Error> {
    let Some(row) = outbox::stored(conn, request.reference_id()).await? else {
        // Retention removed the outbox row since the insert collided with it:
        // both records had outlived their windows. Still not new: absorb it.
        return Ok(Recorded::Duplicate { existing: None });
    };
    let original = fingerprint(&row.account_id, row.amount, &row.currency);
    tracing::info!(
        same_payload = (original == *request.fingerprint()),
        state = row.state.as_str(),
        "key no longer in the inbox but its outbox row is: not charged again, key restored"
    );
    sqlx::query(
        "UPDATE inbox SET fingerprint = $3,
             duplicates = duplicates + (fingerprint =  $3)::int,
             conflicts  = conflicts  + (fingerprint <> $3)::int
         WHERE scope = $1 AND message_id = $2",
    )
    .bind(request.scope())
    .bind(request.message_id())
    .bind(&original[..])
    .execute(&mut *conn)
    .await?;
    if original != *request.fingerprint() {
        insert_conflict(conn, request, &original, raw_body).await?;
        return Ok(Recorded::Conflict);
    }
    Ok(Recorded::Duplicate {
        existing: Some((row.state, row.result)),
    })
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
    .bind(request.scope())
    .bind(request.message_id())
    .bind(stored)
    .bind(&request.fingerprint()[..])
    .bind(raw_body)
    .execute(conn)
    .await?;
    Ok(())
}
