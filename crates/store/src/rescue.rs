//! Putting in-flight rows back in play when their holder can no longer
//! settle them: its lease expired (crashed, paused, cut off, or simply
//! slow), or its database session ended, which PostgreSQL shows at once by
//! releasing the session's advisory lock (the *liveness lock*, see
//! [`hold_liveness`]).
//!
//! A rescued row becomes `unknown`: its holder may have called the provider,
//! so the next claimer resolves it (lookup, keyed retry) before charging. The
//! fence does the rest: the holder's lease token no longer matches, so
//! nothing it writes later is accepted.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

/// The keys of the advisory locks (single-`bigint` form: high half in
/// `classid`, low half in `objid`, `objsubid` 1) that sessions of this
/// database hold.
macro_rules! held_locks {
    () => {
        "SELECT (l.classid::bigint << 32) | l.objid::bigint AS key FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    };
}

/// The rescue itself, over the rows the subquery `$rows` selects (locked,
/// `SKIP LOCKED`), after the CTEs `$with` (empty, or ending in a comma):
/// `unknown`, uncertain, the lease cleared and the account's slot freed, due
/// at `$due`; `$reason` is the SQL of `last_error`; `$out` what it returns
/// (from `rescued`).
macro_rules! rescue {
    ($with:expr, $rows:literal, $reason:literal, $due:literal, $out:literal) => {
        concat!(
            "WITH ", $with, " rescued AS (
                 UPDATE outbox SET state = 'unknown', uncertain_since = coalesce(uncertain_since, now()),
                     last_error = ", $reason, ",
                     lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, lease_lock = NULL,
                     lease_lock_token = NULL, next_attempt_at = ", $due, ", updated_at = now()
                 WHERE id IN (", $rows, ")
                 RETURNING id, account_id
             ), freed AS (
                 DELETE FROM account_slot sl USING rescued r
                 WHERE sl.account_id = r.account_id AND sl.outbox_id = r.id
             )
             ", $out
        )
    };
}

/// Put up to `limit` rows whose lease expired (their holder crashed, paused or
/// lost its connection) back in play as `unknown`: the holder may have called
/// the provider, so the next claimer resolves before charging.
/// `delay` postpones their next attempt (without idempotency keys, long enough
/// for a call the stalled holder may still make to land first).
pub async fn rescue_expired(
    conn: &mut PgConnection,
    limit: i64,
    delay: Duration,
) -> Result<u64, sqlx::Error> {
    let rescued: i64 = sqlx::query_scalar(rescue!(
        "",
        "SELECT id FROM outbox WHERE state = 'in_flight' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        "'lease of ' || coalesce(lease_owner, '?') || ' expired'",
        "now() + make_interval(secs => $2)",
        "SELECT count(*) FROM rescued"
    ))
    .bind(limit)
    .bind(delay.as_secs_f64())
    .fetch_one(&mut *conn)
    .await?;
    // Safety net: a slot whose row is no longer in flight (ordering switched
    // off and on, or a manual change) would block its account for good.
    sqlx::query(
        "DELETE FROM account_slot s WHERE NOT EXISTS (
             SELECT 1 FROM outbox o WHERE o.id = s.outbox_id AND o.state = 'in_flight')
           AND s.claimed_at < now() - interval '1 minute'",
    )
    .execute(conn)
    .await?;
    Ok(u64::try_from(rescued).unwrap_or(0))
}

/// Take the session-level advisory lock `key` on this connection, which must
/// then stay open (and out of any pool) for as long as the replica claims
/// under it. `false` if another session holds it.
pub async fn hold_liveness(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// In-flight rows (up to `limit`), with their lease token, whose holder's
/// liveness lock no session of this database holds: the holder is gone (or
/// has lost its lock's connection). Only a key stored with the row's current
/// lease counts (`lease_lock_token = lease_token`): a lease an older release
/// took or cleared leaves a stale key, which is ignored. Reads the in-flight
/// rows through `outbox_lease` and the lock table once: O(rows in flight),
/// never the table's history.
pub async fn orphaned(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    sqlx::query_as(ORPHANED).bind(limit).fetch_all(conn).await
}

/// [`orphaned`]'s statement. No `ORDER BY id`: with one, the planner may walk
/// the primary key through the whole history looking for in-flight rows;
/// without, the partial index of the rows in flight is the only way in.
const ORPHANED: &str = concat!(
    "SELECT id, lease_token FROM outbox
     WHERE state = 'in_flight' AND lease_expires_at IS NOT NULL
       AND lease_lock IS NOT NULL AND lease_lock_token = lease_token
       AND lease_lock NOT IN (",
    held_locks!(),
    ") LIMIT $1"
);

/// `EXPLAIN` of [`orphaned`] (for the test that it reads the rows in flight,
/// not the table).
pub async fn explain_orphaned(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!("EXPLAIN {ORPHANED}"))
        .bind(1000_i64)
        .fetch_all(conn)
        .await
}

/// Rescue the rows `rows` (id and lease token, from [`orphaned`] passes) that
/// are still in flight under the same lease and a liveness key nobody holds;
/// the rest (settled meanwhile, claimed again, or whose holder took its lock
/// back) are left alone. Returns the ids rescued. `delay` as for
/// [`rescue_expired`]; with `after_lease` (a provider without idempotency
/// keys) the row is not due before its lease would have expired plus
/// `delay` either: a holder that only lost its lock's connection may still
/// be calling until then, and without keys a second call would charge twice.
pub async fn rescue_orphaned(
    conn: &mut PgConnection,
    rows: &[(i64, Uuid)],
    delay: Duration,
    after_lease: bool,
) -> Result<Vec<i64>, sqlx::Error> {
    bind_orphaned(
        sqlx::query_scalar(RESCUE_ORPHANED),
        rows,
        delay,
        after_lease,
    )
    .fetch_all(conn)
    .await
}

/// [`rescue_orphaned`]'s statement. The rows are found by primary key once,
/// in the CTE that locks them (materialized, so no condition below reaches
/// that scan), and judged (still in flight under the same lease, its key
/// held by nobody) on their locked versions after it: a condition on
/// `state` beside the join would let the planner walk `outbox_lease` — every
/// row in flight — and scan the batch once per row (docs/performance.md,
/// "The settle's join"; `plans.rs`).
pub(crate) const RESCUE_ORPHANED: &str = rescue!(
    concat!(
        "held AS MATERIALIZED (",
        held_locks!(),
        "), locked AS MATERIALIZED (
             SELECT o.id, o.state, o.lease_token, o.lease_lock, o.lease_lock_token, g.token
             FROM unnest($1::bigint[], $3::uuid[]) AS g(id, token)
             JOIN outbox o ON o.id = g.id
             FOR UPDATE OF o SKIP LOCKED
         ),"
    ),
    "SELECT l.id FROM locked l
     WHERE l.state = 'in_flight' AND l.lease_token = l.token AND l.lease_lock IS NOT NULL
       AND l.lease_lock_token = l.lease_token AND l.lease_lock NOT IN (SELECT key FROM held)",
    "'holder ' || coalesce(lease_owner, '?') || ' is gone (its database session ended)'",
    "CASE WHEN $4 THEN greatest(now(), lease_expires_at) ELSE now() END + make_interval(secs => $2)",
    "SELECT id FROM rescued"
);

/// Bind [`RESCUE_ORPHANED`]'s parameters.
pub(crate) fn bind_orphaned<'q, O>(
    query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    rows: &[(i64, Uuid)],
    delay: Duration,
    after_lease: bool,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let (ids, tokens): (Vec<i64>, Vec<Uuid>) = rows.iter().copied().unzip();
    query
        .bind(ids)
        .bind(delay.as_secs_f64())
        .bind(tokens)
        .bind(after_lease)
}
