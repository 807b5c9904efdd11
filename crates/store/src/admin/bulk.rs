//! Dead rows retried by filter (`idem outbox retry --error/--account/--since/
//! --until`): a preview that changes nothing, and the retry itself in bounded
//! batches, each its own transaction, recorded as one audit row.
//!
//! The audit row is committed first, with the filter and `status: running`;
//! every batch updates its counts in the batch's own transaction, so the
//! record always says exactly how many rows were retried, even when the
//! command is killed between batches. A finished run says `status: done`. An
//! interrupted one stays `running` with the rows committed so far; running
//! the same command again takes the rest (a retried row is not dead any more,
//! so it never matches twice) under an audit row of its own.
//!
//! Cost: rows are read through `outbox_dead` (only dead rows, in the order
//! they went dead), from the `--since` bound or the last batch's last row,
//! never through the settled history; each dead row in the window is read
//! once per run. The error text and account are checked on those rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;

use super::audit::{self, Action};
use super::filter::RetryFilter;
use super::outbox::{OUTBOX_COLUMNS, OutboxRow};

/// The dead rows a filter matches: `$1` the error pattern, `$2` the
/// account, `$3`..`$4` the time range. The time is `coalesce(settled_at,
/// '-infinity')`, `outbox_dead`'s key, so the range bounds the index scan.
const MATCHES: &str = "state = 'dead'
       AND coalesce(settled_at, '-infinity'::timestamptz) >= coalesce($3, '-infinity'::timestamptz)
       AND coalesce(settled_at, '-infinity'::timestamptz) < coalesce($4, 'infinity'::timestamptz)
       AND ($4::timestamptz IS NULL OR settled_at IS NOT NULL)
       AND ($1::text IS NULL OR last_error ILIKE $1)
       AND ($2::text IS NULL OR account_id = $2)";

/// What a bulk retry would take, without changing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    /// Rows matched, uncertain ones included.
    pub matched: i64,
    /// Of those, rows whose last outcome was uncertain: retried only with `force`.
    pub uncertain: i64,
    /// The first matches, in the order a retry takes them.
    pub sample: Vec<OutboxRow>,
}

/// Count the rows `filter` matches and read the first `sample` of them.
pub async fn preview(
    conn: &mut PgConnection,
    filter: &RetryFilter,
    sample: i64,
) -> Result<Preview, sqlx::Error> {
    let (matched, uncertain): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE uncertain_since IS NOT NULL)
         FROM outbox WHERE {MATCHES}"
    ))
    .bind(filter.pattern())
    .bind(&filter.account)
    .bind(filter.since)
    .bind(filter.until)
    .fetch_one(&mut *conn)
    .await?;
    let sample = sqlx::query_as(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {MATCHES}
         ORDER BY coalesce(settled_at, '-infinity'::timestamptz), id LIMIT $5"
    ))
    .bind(filter.pattern())
    .bind(&filter.account)
    .bind(filter.since)
    .bind(filter.until)
    .bind(sample.max(0))
    .fetch_all(&mut *conn)
    .await?;
    Ok(Preview {
        matched,
        uncertain,
        sample,
    })
}

/// How far a bulk retry got: the totals its audit row holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The audit row of the whole action.
    pub audit_id: i64,
    /// Batches committed.
    pub batches: i64,
    /// Rows turned `dead` → `pending`.
    pub retried: i64,
    /// Matched rows left dead: their last outcome was uncertain and the
    /// action was not forced.
    pub skipped_uncertain: i64,
}

/// Where the next batch starts: after this row (in `outbox_dead`'s order).
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
struct Cursor {
    /// `None`: the row had no `settled_at` (sorts first), or no row yet.
    dead_at: Option<DateTime<Utc>>,
    id: i64,
}

/// One batch's outcome.
#[derive(sqlx::FromRow)]
struct Batch {
    /// Rows matched and locked.
    taken: i64,
    retried: i64,
    uncertain: i64,
    last_dead_at: Option<DateTime<Utc>>,
    last_id: Option<i64>,
}

/// Retry every dead row `filter` matches, `batch` rows per transaction:
/// `dead` → `pending`, due now, attempts reset (as `retry_dead` does for
/// one). Rows whose last outcome was uncertain are left dead unless
/// `action.force`, and counted. Calls `progress` after each committed batch.
/// The audit row (`outbox.retry_bulk`, target `outbox`) is written first;
/// see the module's comment for an interrupted run.
pub async fn retry_matching(
    conn: &mut PgConnection,
    filter: &RetryFilter,
    action: &Action<'_>,
    batch: i64,
    mut progress: impl FnMut(&Progress),
) -> Result<Progress, sqlx::Error> {
    let batch = batch.max(1);
    let mut done = Progress {
        audit_id: begin(conn, filter, action, batch).await?,
        ..Progress::default()
    };
    let mut cursor = Cursor {
        dead_at: filter.since,
        id: 0,
    };
    loop {
        // Until a batch finds nothing: a short batch is not the end, since a
        // row that changed while its lock was awaited drops out of the
        // batch (LIMIT with FOR UPDATE may return fewer rows).
        if retry_batch(conn, filter, action.force, batch, &mut cursor, &mut done).await? == 0 {
            break;
        }
        progress(&done);
    }
    audit::update_details(conn, done.audit_id, json!({"status": "done"})).await?;
    Ok(done)
}

/// Commit the action's audit row: who, why, the filter, nothing retried yet.
async fn begin(
    conn: &mut PgConnection,
    filter: &RetryFilter,
    action: &Action<'_>,
    batch: i64,
) -> Result<i64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let details = json!({
        "from": "dead", "to": "pending", "filter": filter.describe(), "force": action.force,
        "batch": batch, "status": "running", "batches": 0, "retried": 0,
        "skipped_uncertain": 0,
    });
    let id = audit::insert(&mut tx, action, "outbox.retry_bulk", "outbox", details).await?;
    tx.commit().await?;
    Ok(id)
}

/// One transaction: lock up to `batch` matching rows after `cursor`, retry
/// those that may be, add the counts to the audit row, commit. Returns how
/// many rows the batch took (0: none left).
///
/// The lock waits (no `SKIP LOCKED`): a dead row is locked only by another
/// hand change or the reconciler settling it, briefly; after the wait the
/// row is checked again, so one settled meanwhile is not dead and is left.
/// Rows are locked in index order, one batch at a time, so two bulk retries
/// cannot deadlock each other on outbox rows. The `account_head` rows the
/// reopen trigger locks (one per account, in the order the rows are
/// retried) can meet another transaction's in the other order — another
/// bulk retry over the same accounts, an inbox batch recording new charges
/// of them: PostgreSQL then aborts one after `deadlock_timeout`, nothing is
/// changed by it, and the retry resumes when run again (the inbox batch is
/// recorded again).
async fn retry_batch(
    conn: &mut PgConnection,
    filter: &RetryFilter,
    force: bool,
    batch: i64,
    cursor: &mut Cursor,
    done: &mut Progress,
) -> Result<i64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let b: Batch = sqlx::query_as(&format!(
        "WITH taken AS (
             SELECT id, uncertain_since IS NOT NULL AS uncertain,
                    coalesce(settled_at, '-infinity'::timestamptz) AS dead_at
             FROM outbox
             WHERE {MATCHES}
               AND (coalesce(settled_at, '-infinity'::timestamptz), id)
                   > (coalesce($5, '-infinity'::timestamptz), $6)
             ORDER BY coalesce(settled_at, '-infinity'::timestamptz), id
             LIMIT $7
             FOR NO KEY UPDATE
         ), retried AS (
             UPDATE outbox o SET state = 'pending', attempts = 0, next_attempt_at = now(),
                    settled_at = NULL, updated_at = now()
             FROM taken t
             WHERE o.id = t.id AND (NOT t.uncertain OR $8)
             RETURNING o.id
         ), last AS (
             SELECT nullif(dead_at, '-infinity'::timestamptz) AS dead_at, id FROM taken
             ORDER BY taken.dead_at DESC, id DESC LIMIT 1
         )
         SELECT (SELECT count(*) FROM taken) AS taken,
                (SELECT count(*) FROM retried) AS retried,
                (SELECT count(*) FROM taken WHERE uncertain) AS uncertain,
                (SELECT dead_at FROM last) AS last_dead_at,
                (SELECT id FROM last) AS last_id"
    ))
    .bind(filter.pattern())
    .bind(&filter.account)
    .bind(filter.since)
    .bind(filter.until)
    .bind(cursor.dead_at)
    .bind(cursor.id)
    .bind(batch)
    .bind(force)
    .fetch_one(&mut *tx)
    .await?;
    // Nothing (more) matched: no batch to count, nothing to commit.
    let Some(id) = b.last_id else {
        return Ok(0);
    };
    *cursor = Cursor {
        dead_at: b.last_dead_at,
        id,
    };
    let mut next = done.clone();
    next.batches += 1;
    next.retried += b.retried;
    next.skipped_uncertain += if force { 0 } else { b.uncertain };
    let patch = json!({
        "batches": next.batches, "retried": next.retried,
        "skipped_uncertain": next.skipped_uncertain,
        "cursor": {"dead_at": cursor.dead_at, "id": cursor.id},
    });
    audit::update_details(&mut tx, done.audit_id, patch).await?;
    tx.commit().await?;
    *done = next;
    Ok(b.taken)
}
