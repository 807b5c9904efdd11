//! Keyset pages of the operators' lists (the console's and `idem ... list`),
//! newest first, each page after the opaque cursor the previous one returned.
//!
//! Cost: every page is one statement that reads at most `limit` + 1 rows of
//! an ordered index, or, where no index makes the filter dense, at most
//! [`SCAN_BUDGET`] entries of one: O(limit + budget) whatever the table holds
//! and whatever the filter. No offset anywhere (an offset reads every row
//! it skips). A page that reaches its budget before `limit` matches is short,
//! with `next` continuing where the walk stopped ([`Page::scan_limited`]; the
//! console and the CLI say "scanned N rows, continue"). The outbox filter
//! picks the index whose rows it wants (`outbox::Path`), and none is added
//! for this: every index of the outbox is paid by every message write.
//! - no state: the primary key, newest id first. Account, scope, error text
//!   and time are checked on the rows walked, within the budget.
//! - `dead`: `outbox_dead`, latest dead first; only dead rows are walked.
//! - `pending`, `unknown`: `outbox_due`, latest due first (both states; the
//!   other one is skipped within the budget, and is the rarer in practice).
//! - `in_flight`: `outbox_lease`, latest lease first. The index holds the
//!   lease time only, so the plan sorts the in-flight rows below the cursor
//!   by id within a time: they are at most the replicas' dispatch
//!   concurrency (the rescuer returns expired ones), never the history.
//! - `succeeded`: `outbox_claims_charge (created_at, id)`, newest first; the
//!   time range bounds the walk itself (unknown rows are skipped).
//! - `declined`: the primary key with the state checked within the budget
//!   (`outbox_settled` orders by a time a hand edit may leave NULL).
//! - an account with an open state: `outbox_open_by_account`, that account's
//!   open rows only. A rare account among settled rows is the budget's case.
//!
//! Quarantine and key conflicts take no filter: their primary keys, newest
//! first, O(limit). Audit rows by target prefix walk the primary key within
//! the budget: the table holds one row per operator action (a bulk retry is
//! one), so the budget covers a long history.

mod cursor;
mod outbox;

pub use outbox::{MAX_FILTER_TEXT, OutboxFilter, explain_outbox_page, outbox_page};

use serde::Serialize;
use sqlx::PgConnection;

use super::audit::AuditRow;
use super::inbox::{CONFLICT_COLUMNS, ConflictRow, RawConflict};
use super::quarantine::{QUARANTINE_COLUMNS, QuarantineRow};

/// Index entries a page statement reads at most when its filter is not the
/// index's own: a fixed cost per page (a few thousand buffers at worst).
pub const SCAN_BUDGET: i64 = 5_000;

/// Rows a page holds at most.
pub const MAX_LIMIT: i64 = 500;

/// One page of a list, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The rows, in list order.
    pub rows: Vec<T>,
    /// The cursor of the following page (`None`: nothing older).
    pub next: Option<String>,
    /// Index entries the statement read (for the UI and the plan tests).
    pub examined: i64,
    /// The walk stopped at [`SCAN_BUDGET`] before the page filled: older
    /// matches may follow, from `next`.
    pub scan_limited: bool,
}

/// Why a page was not read.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The cursor is not one of this list's; says what is wrong.
    #[error("bad cursor: {0}")]
    BadCursor(String),
    /// A filter no page takes; says which and why.
    #[error("bad filter: {0}")]
    BadFilter(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// `limit` within 1..=[`MAX_LIMIT`].
pub(super) fn clamp(limit: i64) -> i64 {
    limit.clamp(1, MAX_LIMIT)
}

/// The page from the `limit` + 1 rows read after a cursor: one more than
/// `limit` means more follow, from the last row kept.
fn dense<T>(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let examined = rows.len() as i64;
    let more = examined > limit;
    rows.truncate(limit as usize);
    Page {
        next: more.then(|| rows.last().map(&cursor_of)).flatten(),
        rows,
        examined,
        scan_limited: false,
    }
}

/// One page of quarantined messages, newest first.
pub async fn quarantine_page(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<QuarantineRow>, PageError> {
    let limit = clamp(limit);
    let after = after
        .map(|a| cursor::decode(a, "quarantine", false))
        .transpose()?;
    let resume = if after.is_some() { "WHERE id < $2" } else { "" };
    let sql =
        format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine {resume} ORDER BY id DESC LIMIT $1");
    let mut query = sqlx::query_as::<_, QuarantineRow>(&sql).bind(limit + 1);
    if let Some(after) = after {
        query = query.bind(after.id);
    }
    let rows = query.fetch_all(conn).await?;
    Ok(dense(rows, limit, |r: &QuarantineRow| {
        cursor::encode("quarantine", None, r.id)
    }))
}

/// One page of key conflicts (every key's), newest first.
pub async fn conflict_page(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<ConflictRow>, PageError> {
    let limit = clamp(limit);
    let after = after
        .map(|a| cursor::decode(a, "conflicts", false))
        .transpose()?;
    let resume = if after.is_some() { "WHERE id < $2" } else { "" };
    let sql =
        format!("SELECT {CONFLICT_COLUMNS} FROM key_conflict {resume} ORDER BY id DESC LIMIT $1");
    let mut query = sqlx::query_as::<_, RawConflict>(&sql).bind(limit + 1);
    if let Some(after) = after {
        query = query.bind(after.id);
    }
    let rows = query.fetch_all(conn).await?;
    let rows = rows.into_iter().map(ConflictRow::from).collect();
    Ok(dense(rows, limit, |r: &ConflictRow| {
        cursor::encode("conflicts", None, r.id)
    }))
}

/// An audit row the walk returned: a match, or the last one read.
#[derive(sqlx::FromRow)]
struct WalkedAudit {
    /// The row.
    #[sqlx(flatten)]
    row: AuditRow,
    /// Its place in the walk, from 1.
    n: i64,
    /// The walk's last row.
    last: bool,
    /// Its target starts with the prefix.
    matched: bool,
}

/// One page of audit rows, newest first; only targets starting with
/// `target_prefix` (e.g. `outbox:` or `outbox:17`) when given. Walks at most
/// [`SCAN_BUDGET`] rows.
pub async fn audit_page(
    conn: &mut PgConnection,
    target_prefix: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<AuditRow>, PageError> {
    let limit = clamp(limit);
    if let Some(prefix) = target_prefix
        && (prefix.is_empty() || prefix.len() > MAX_FILTER_TEXT)
    {
        return Err(PageError::BadFilter(format!(
            "--target must be 1 to {MAX_FILTER_TEXT} bytes (e.g. outbox:17), not {}",
            prefix.len()
        )));
    }
    let after = after
        .map(|a| cursor::decode(a, "audit", false))
        .transpose()?;
    let resume = if after.is_some() { "WHERE id < $3" } else { "" };
    let sql = format!(
        "SELECT id, at, actor, action, target, reason, details, n, last, matched FROM (
           SELECT walk.*, row_number() OVER w AS n, lead(walk.id) OVER w IS NULL AS last,
                  ($1::text IS NULL OR starts_with(walk.target, $1)) AS matched
           FROM (SELECT id, at, actor, action, target, reason, details FROM audit {resume}
                 ORDER BY id DESC LIMIT {SCAN_BUDGET}) walk
           WINDOW w AS (ORDER BY walk.id DESC)
         ) s WHERE last OR matched LIMIT $2"
    );
    let mut query = sqlx::query_as::<_, WalkedAudit>(&sql)
        .bind(target_prefix)
        .bind(limit + 1);
    if let Some(after) = after {
        query = query.bind(after.id);
    }
    let walked = query
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|w| Walked {
            n: w.n,
            last: w.last,
            matched: w.matched,
            cursor: cursor::encode("audit", None, w.row.id),
            row: w.row,
        })
        .collect();
    Ok(walked_page(walked, limit))
}

/// A row of a bounded walk, as the page is assembled from it.
pub(super) struct Walked<T> {
    /// The row.
    pub row: T,
    /// Its place in the walk, from 1.
    pub n: i64,
    /// The walk's last entry (its budget or its index ran out there).
    pub last: bool,
    /// Every filter holds (the last entry is returned even if not).
    pub matched: bool,
    /// The cursor continuing after it.
    pub cursor: String,
}

/// The page of a bounded walk from the rows it returned (at most `limit` +
/// 1 matches, and its last entry): full with `next` after its last row when
/// another match followed; else `next` after the last entry only if the
/// walk stopped at its budget, not at the end of its index.
pub(super) fn walked_page<T>(mut walked: Vec<Walked<T>>, limit: i64) -> Page<T> {
    walked.sort_by_key(|w| w.n);
    let examined = walked.last().map_or(0, |w| w.n);
    let stopped = walked
        .iter()
        .find(|w| w.last && w.n >= SCAN_BUDGET)
        .map(|w| w.cursor.clone());
    let mut rows = Vec::new();
    let mut next = None;
    for w in walked.into_iter().filter(|w| w.matched) {
        if rows.len() as i64 == limit {
            // A match after a full page: the next page starts after this one's last row.
            return Page {
                rows,
                next,
                examined,
                scan_limited: false,
            };
        }
        next = Some(w.cursor);
        rows.push(w.row);
    }
    Page {
        scan_limited: stopped.is_some() && (rows.len() as i64) < limit,
        rows,
        next: stopped,
        examined,
    }
}
