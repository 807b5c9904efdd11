//! Retention: delete what has outlived its window, oldest first, in bounded
//! batches (`docs/contracts.md`, guarantee 5: the tables do not grow forever).
//!
//! Every delete picks at most `limit` rows with `FOR UPDATE SKIP LOCKED` and
//! deletes them in the same statement, so one batch is one short transaction
//! that never waits for a row somebody else holds: a consumer recording a
//! duplicate of an old key, a dispatcher settling, or another replica's
//! retention pass. The caller runs batches until one comes back short.
//!
//! **The two large deletes are planned every time** (not kept as prepared
//! statements): a generic plan, which PostgreSQL may switch a prepared
//! statement to after five runs, does not know `LIMIT $2`, guesses a tenth
//! of the table and joins it by a hash over a sequential scan of all of
//! `inbox` or `outbox` — O(table) per batch (measured on 200,000 rows:
//! 404,192 rows handled to delete 32 keys). They run once per batch, so
//! planning each run costs nothing that matters.
//!
//! Windows are measured by the database's clock (`now()`), the same clock that
//! stamped the rows, so replica clock skew cannot shorten them.
//!
//! The windows are the caller's, passed as [`Duration`]s; `idem run` refuses
//! windows shorter than the redelivery/lease horizon at start
//! (`crates/daemon/src/config/retention.rs`), so nothing here re-checks them.

use std::time::Duration;

use sqlx::PgConnection;

/// The advisory lock retention passes share (any 64-bit value no other part of
/// idem uses; reads as "idemret1"). See [`try_lock`].
pub const LOCK_KEY: i64 = 0x6964_656d_7265_7431;

/// Try to take the retention lock for the rest of the caller's transaction.
///
/// Correctness does not need it (`SKIP LOCKED` already keeps concurrent
/// deletes off each other's rows); it keeps N replicas from all scanning the
/// same old range every interval. Transaction-scoped on purpose: it is
/// released by the commit or rollback, also when the connection dies, so a
/// pooled connection can never keep it after an error.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// Delete up to `limit` inbox keys last seen more than `window` ago whose
/// outbox row is settled or gone. Returns how many were deleted.
///
/// **Why `last_seen_at`, not `received_at`.** A key exists to catch the next
/// copy of its message. Producers retry from their *latest* attempt (and a
/// broker redelivers, an operator re-publishes, a dead-letter queue is
/// replayed), so while copies keep arriving more may follow: the window runs
/// from the last copy seen. That keeps a key at least as long as
/// `received_at` would, never shorter. `received_at < cutoff` is implied
/// (`last_seen_at >= received_at`) and stated only so the scan can walk
/// `inbox_received_at` from the oldest key (see the migration).
///
/// **Why not while the outbox row is unresolved.** A key whose charge is
/// still `pending`, `in_flight` or `unknown`, or `dead` and waiting for an
/// operator, is kept whatever its age: the operation is not finished, its
/// producer may still be retrying, and the row must stay answerable through
/// its key (an operator's `idem outbox retry` sends it again under the same
/// reference). Once resolved (`idem outbox resolve`) the row is settled and
/// the key follows the rule above, its settled row catching copies meanwhile.
/// Should a key still be missing while its outbox row exists (a settled row
/// outlives the inbox window by default), a new copy is still not charged
/// again: `outbox.reference_id` is UNIQUE, and [`crate::inbox::record`]
/// turns that collision into a duplicate (or a conflict) and restores the
/// key.
pub async fn delete_inbox_keys(
    conn: &mut PgConnection,
    window: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "WITH doomed AS (
             SELECT i.scope, i.message_id FROM inbox i
             WHERE i.received_at  < now() - make_interval(secs => $1)
               AND i.last_seen_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (
                   SELECT 1 FROM outbox o
                   WHERE o.scope = i.scope AND o.message_id = i.message_id
                     AND o.state IN ('pending', 'in_flight', 'unknown', 'dead'))
             ORDER BY i.received_at
             LIMIT $2
             FOR UPDATE OF i SKIP LOCKED
         )
         DELETE FROM inbox i USING doomed d
         WHERE i.scope = d.scope AND i.message_id = d.message_id",
    )
    // Planned with its values every time (the module's doc).
    .persistent(false)
    .bind(window.as_secs_f64())
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Delete up to `limit` settled outbox rows (`succeeded`, `declined`)
/// settled more than `window` ago. Returns how many were deleted.
///
/// Never an open row (`pending`, `in_flight`, `unknown`): those are work to
/// do. Never a `dead` row, whatever its age: it is a charge nobody resolved,
/// and its row is the only record of it; it leaves `dead` only by an
/// operator's retry (back to `pending`) or resolve (`succeeded`/`declined`,
/// `settled_at` = then, so the window starts at the resolution). A final row
/// without `settled_at` is never deleted either (the safe side: every settle
/// sets it).
///
/// The walk uses the partial index `outbox_settled` (`state IN ('succeeded',
/// 'declined', 'dead')`, which this list implies): dead rows older than the
/// window sit in it and are stepped over by every batch, a cost of O(dead
/// rows), i.e. of the operators' backlog, not of history.
pub async fn delete_settled_outbox(
    conn: &mut PgConnection,
    window: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    // The rows' attempt history goes in the same statement.
    let done: i64 = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE state IN ('succeeded', 'declined')
                   AND settled_at < now() - make_interval(secs => $1)
                 ORDER BY settled_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING id
         ), history AS (
             DELETE FROM attempt WHERE outbox_id IN (SELECT id FROM gone)
         )
         SELECT count(*) FROM gone",
    )
    // Planned with its values every time (the module's doc).
    .persistent(false)
    .bind(window.as_secs_f64())
    .bind(limit)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(done).unwrap_or(0))
}

/// Delete up to `limit` quarantined messages received more than `window` ago.
/// Quarantine is for operators to inspect and fix producers; past its window
/// the evidence is gone (docs/operations.md, "Retention").
pub async fn delete_quarantine(
    conn: &mut PgConnection,
    window: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM quarantine WHERE id IN (
             SELECT id FROM quarantine
             WHERE received_at < now() - make_interval(secs => $1)
             ORDER BY received_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(window.as_secs_f64())
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Delete up to `limit` key-conflict records received more than `window` ago.
/// They are reports for the producer's owner, not dedup state: the inbox key
/// (and its fingerprint) is what refuses the next conflicting copy.
pub async fn delete_key_conflicts(
    conn: &mut PgConnection,
    window: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM key_conflict WHERE id IN (
             SELECT id FROM key_conflict
             WHERE received_at < now() - make_interval(secs => $1)
             ORDER BY received_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(window.as_secs_f64())
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
