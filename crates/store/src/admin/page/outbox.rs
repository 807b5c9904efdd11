//! The outbox list: its filter, the index each filter reads (the module doc
//! of `page` says why each is O(page)), and the one statement of a page.

use chrono::{DateTime, Utc};

use super::cursor::{self, Cursor};
use super::{Page, PageError, SCAN_BUDGET, Walked, clamp, walked_page};
use crate::admin::outbox::{OUTBOX_COLUMNS, OutboxRow};
use crate::outbox::OutboxState;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};

/// Longest filter text accepted: longer ones are no account, scope or error
/// text an operator types, and would only make every row's comparison dear.
pub const MAX_FILTER_TEXT: usize = 1_000;

/// Filters of the outbox list, all optional. Built by [`OutboxFilter::new`]
/// only, which refuses empty texts, texts over [`MAX_FILTER_TEXT`] bytes and
/// an empty time range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    /// Only rows in this state.
    state: Option<OutboxState>,
    /// Only this account's rows.
    account: Option<String>,
    /// Only this dedup scope's rows.
    scope: Option<String>,
    /// Case-insensitive substring of `last_error`, matched literally.
    error: Option<String>,
    /// Created at or after.
    since: Option<DateTime<Utc>>,
    /// Created before.
    until: Option<DateTime<Utc>>,
}

impl OutboxFilter {
    /// The filter of rows in `state`, of `account` and `scope`, whose last
    /// error contains `error` (case-insensitive; `%`, `_`, `\` literal),
    /// created in `[since, until)`. Every part is optional.
    pub fn new(
        state: Option<OutboxState>,
        account: Option<String>,
        scope: Option<String>,
        error: Option<String>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Self, PageError> {
        for (flag, text) in [("account", &account), ("scope", &scope), ("error", &error)] {
            match text.as_deref().map(str::len) {
                Some(0) => {
                    return Err(PageError::BadFilter(format!(
                        "--{flag} is empty (an empty text matches every row; leave it out instead)"
                    )));
                }
                Some(n) if n > MAX_FILTER_TEXT => {
                    return Err(PageError::BadFilter(format!(
                        "--{flag} is {n} bytes long, over the {MAX_FILTER_TEXT} a filter takes"
                    )));
                }
                _ => {}
            }
        }
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(PageError::BadFilter(format!(
                "--since {since} is not before --until {until}: the range is empty"
            )));
        }
        Ok(Self {
            state,
            account,
            scope,
            error,
            since,
            until,
        })
    }

    /// Only rows in this state.
    pub fn state(&self) -> Option<OutboxState> {
        self.state
    }

    /// Only this account's rows.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// Only this scope's rows.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Only rows whose last error contains this (case-insensitive).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Only rows created at or after this.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        self.since
    }

    /// Only rows created before this.
    pub fn until(&self) -> Option<DateTime<Utc>> {
        self.until
    }

    /// The `ILIKE` pattern of the error text, its `%`, `_` and `\` literal.
    fn pattern(&self) -> Option<String> {
        self.error
            .as_deref()
            .map(crate::admin::filter::contains_pattern)
    }

    /// The index a page of this filter reads, in its order.
    fn path(&self) -> Path {
        use OutboxState::*;
        match (self.state, &self.account) {
            (Some(Pending | InFlight | Unknown), Some(_)) => Path::OpenAccount,
            (Some(Dead), _) => Path::Dead,
            (Some(Pending | Unknown), None) => Path::Due,
            (Some(InFlight), None) => Path::Lease,
            (Some(Succeeded), _) => Path::Succeeded,
            (Some(Declined) | None, _) => Path::Id,
        }
    }
}

/// An ordered index a page walks backwards, newest key first. Each matches
/// its index's predicate literally (the planner uses a partial index only
/// then) and orders by its key, so the walk is an index scan with no sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The primary key: every row, newest first.
    Id,
    /// `outbox_open_by_account (account_id, id)`: one account's open rows.
    OpenAccount,
    /// `outbox_dead (coalesce(settled_at, '-infinity'), id)`: latest dead first.
    Dead,
    /// `outbox_due (next_attempt_at, id)`: pending and unknown, latest due first.
    Due,
    /// `outbox_lease (lease_expires_at)`: in flight, latest lease first.
    Lease,
    /// `outbox_claims_charge (created_at, id)`: succeeded (and unknown), newest first.
    Succeeded,
}

impl Path {
    /// The cursor's list name.
    fn name(self) -> &'static str {
        match self {
            Path::Id => "outbox",
            Path::OpenAccount => "open",
            Path::Dead => "dead",
            Path::Due => "due",
            Path::Lease => "lease",
            Path::Succeeded => "succeeded",
        }
    }

    /// (the index's predicate, its time key or `None`).
    fn sql(self) -> (&'static str, Option<&'static str>) {
        match self {
            Path::Id => ("true", None),
            Path::OpenAccount => (
                "account_id = $2 AND state IN ('pending', 'in_flight', 'unknown')",
                None,
            ),
            Path::Dead => (
                "state = 'dead'",
                Some("coalesce(settled_at, '-infinity'::timestamptz)"),
            ),
            Path::Due => ("state IN ('pending', 'unknown')", Some("next_attempt_at")),
            Path::Lease => ("state = 'in_flight'", Some("lease_expires_at")),
            // The time range is this index's key: a range bounds the walk.
            Path::Succeeded => (
                "state IN ('succeeded', 'unknown')
                 AND created_at >= coalesce($5, '-infinity'::timestamptz)
                 AND created_at < coalesce($6, 'infinity'::timestamptz)",
                Some("created_at"),
            ),
        }
    }

    /// The statement of a page: the walk of at most [`SCAN_BUDGET`] index entries
    /// after the cursor (`$8` time, `$9` id), numbered, the last one marked;
    /// of those, the rows every filter matches (`$1`..`$6`) and the last one
    /// scanned (where a short page's next page starts), `$7` at most.
    fn statement(self, after: Option<Cursor>) -> String {
        let (predicate, key) = self.sql();
        let (key_out, order, resume) = match key {
            None => ("NULL::timestamptz", "id DESC", "id < $8"),
            Some(key) => (
                key,
                "1 DESC, id DESC",
                // `key <= $8` alone is what an index on the time only (outbox_lease) can seek by.
                if self == Path::Dead {
                    "(coalesce(settled_at, '-infinity'::timestamptz), id)
                     < (coalesce($8, '-infinity'::timestamptz), $9)"
                } else {
                    "({key}) <= $8 AND ({key}, id) < ($8, $9)"
                },
            ),
        };
        let resume = resume.replace("{key}", key.unwrap_or("id"));
        // The window's order must be the walk's own, or the plan sorts the
        // whole walk (a constant key is no order to the planner).
        let window = match key {
            None => "walk.id DESC",
            Some(_) => "walk.key_ts DESC, walk.id DESC",
        };
        let resume = match after {
            Some(_) => format!("AND {resume}"),
            None => String::new(),
        };
        // `matched` is NULL-free (a NULL last_error matches no error text):
        // the last entry is returned either way and told apart by it.
        format!(
            "SELECT nullif(key_ts, '-infinity'::timestamptz) AS key_ts, {OUTBOX_COLUMNS},
                    n, last, matched
             FROM (
               SELECT walk.*, row_number() OVER w AS n, lead(walk.id) OVER w IS NULL AS last,
                      coalesce(($1::outbox_state IS NULL OR walk.state = $1)
                        AND ($2::text IS NULL OR walk.account_id = $2)
                        AND ($3::text IS NULL OR walk.scope = $3)
                        AND ($4::text IS NULL OR walk.last_error ILIKE $4)
                        AND walk.created_at >= coalesce($5::timestamptz, '-infinity'::timestamptz)
                        AND walk.created_at < coalesce($6::timestamptz, 'infinity'::timestamptz),
                      false) AS matched
               FROM (SELECT {key_out} AS key_ts, {OUTBOX_COLUMNS} FROM outbox
                     WHERE {predicate} {resume} ORDER BY {order} LIMIT {SCAN_BUDGET}) walk
               WINDOW w AS (ORDER BY {window})
             ) s
             WHERE last OR matched
             LIMIT $7"
        )
    }
}

/// One row the statement returned: a match, or the last entry walked.
#[derive(sqlx::FromRow)]
struct WalkedRow {
    /// The row.
    #[sqlx(flatten)]
    row: OutboxRow,
    /// Its path's time key.
    key_ts: Option<DateTime<Utc>>,
    /// Its place in the walk, from 1.
    n: i64,
    /// The walk's last entry (the budget or the index ran out).
    last: bool,
    /// Every filter holds (the last entry is returned even if not).
    matched: bool,
}

/// One page of the outbox rows `filter` matches, newest first in the order
/// of the index the filter reads, after cursor `after` (the `next` of the
/// previous page). At most `limit` (clamped to 1..=500) rows, from at most
/// [`SCAN_BUDGET`] index entries: a short page with `next` set means the
/// walk stopped at its budget, not that nothing older matches.
pub async fn outbox_page(
    conn: &mut PgConnection,
    filter: &OutboxFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<OutboxRow>, PageError> {
    let (path, after) = start(filter, after)?;
    let sql = path.statement(after);
    let query = sqlx::query_as::<_, WalkedRow>(&sql);
    let walked = bind(query, filter, path, after, limit)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|w| Walked {
            n: w.n,
            last: w.last,
            matched: w.matched,
            cursor: cursor::encode(path.name(), w.key_ts, w.row.id),
            row: w.row,
        })
        .collect();
    Ok(walked_page(walked, clamp(limit)))
}

/// The plan of [`outbox_page`]'s statement, run (`EXPLAIN (ANALYZE,
/// BUFFERS)`): what the plan tests read, and what an operator asking why a
/// page is slow sends.
pub async fn explain_outbox_page(
    conn: &mut PgConnection,
    filter: &OutboxFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, PageError> {
    let (path, after) = start(filter, after)?;
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", path.statement(after));
    let query = sqlx::query_as::<_, (String,)>(&sql);
    let lines = bind(query, filter, path, after, limit)
        .fetch_all(conn)
        .await?;
    Ok(lines.into_iter().map(|(line,)| line).collect())
}

/// The path of `filter` and the cursor `after`, checked against it.
fn start(filter: &OutboxFilter, after: Option<&str>) -> Result<(Path, Option<Cursor>), PageError> {
    let path = filter.path();
    // Every time key but the dead one (NULL for a hand-made dead row) is set.
    let needs_ts = path.sql().1.is_some() && path != Path::Dead;
    let after = after
        .map(|a| cursor::decode(a, path.name(), needs_ts))
        .transpose()?;
    Ok((path, after))
}

/// `query` (a page statement of `path`) with its parameters bound.
fn bind<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    filter: &'q OutboxFilter,
    path: Path,
    after: Option<Cursor>,
    limit: i64,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let query = query
        .bind(filter.state)
        .bind(&filter.account)
        .bind(&filter.scope)
        .bind(filter.pattern())
        .bind(filter.since)
        .bind(filter.until)
        .bind(clamp(limit) + 1);
    match (after, path.sql().1) {
        (None, _) => query,
        (Some(after), None) => query.bind(after.id),
        (Some(after), Some(_)) => query.bind(after.ts).bind(after.id),
    }
}
