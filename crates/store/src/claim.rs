//! Claiming due outbox rows with a lease, in two shapes.
//!
//! - **Unordered** (`--per-account-ordering` off): the oldest due rows
//!   through the partial index `outbox_due`, `FOR UPDATE SKIP LOCKED`. It reads
//!   `limit` rows plus those other claimers hold: O(batch).
//! - **Per-account ordering**: only an account's oldest open row (its *head*)
//!   may be claimed, and only while no other row of the account is in flight
//!   (`account_slot`). Walking the due rows and asking each "is there an older
//!   open row?" costs O(backlog) when the backlog sits on few accounts: 20,000
//!   due rows on 5 busy accounts meant 20,000 probes for a claim that finds
//!   nothing. So the claim walks **accounts**, not rows: the accounts with
//!   open work after a cursor, in `account_head`'s key order, and for each one
//!   descent of `outbox_open_by_account` from the account's floor (a lower
//!   bound of its open ids, [`crate::heads`]) to its head. A claim reads
//!   O(accounts walked) = O(batch + accounts in flight), whatever the backlog,
//!   its shape and the charges settled on the same accounts before it (docs/performance.md, "Claims under skew").
//!
//! The cursor goes round the accounts (it wraps at the end), so every account
//! with work is reached within a few claims, and a busy account cannot starve
//! the others: accounts are served round-robin, each in outbox order. What a
//! walk finds behind (a floor below its account's head, an account without
//! open work whose row was left) it tells [`crate::heads::tidy`], in the same
//! claim.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::heads::{self, Behind};
use crate::outbox::Claimed;

/// Where a replica's walk over the accounts resumes: after the last account
/// it passed. A fresh cursor starts at the first account.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AccountCursor {
    after: String,
    cut_short: bool,
}

impl AccountCursor {
    /// The account the next walk starts after (`""`: the first).
    pub fn after(&self) -> &str {
        &self.after
    }

    /// Whether the last claim's walk stopped at its bound on accounts (not
    /// at the end, not at a full batch): accounts after it may have work
    /// right now, so the caller should claim again rather than wait.
    pub fn cut_short(&self) -> bool {
        self.cut_short
    }
}

/// Accounts a walk visits at most for a claim of `limit` rows: the batch,
/// plus room for accounts whose head is in flight or backing off (each costs
/// two index probes), so a claim fills in one walk while few heads are busy.
pub fn walk_bound(limit: i64) -> i64 {
    limit.max(1).saturating_mul(2).saturating_add(64)
}

/// Who takes a lease: the replica's name (for operators), how long, and the
/// key of the advisory lock its database session holds (see
/// `crate::liveness`), stored on the rows so that other replicas can tell
/// when it is gone; `None` leaves the rows to the lease expiry alone.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// Stored as `lease_owner`.
    pub owner: &'a str,
    /// How long the lease lasts.
    pub lease: Duration,
    /// Stored as `lease_lock`.
    pub lock: Option<i64>,
}

/// Claim up to `limit` due rows (`pending`, or `unknown` whose backoff passed)
/// for `owner`, for `lease`. Rows locked by another claimer are skipped, not
/// waited for.
///
/// With `per_account_ordering`, only the oldest open row of an account is
/// eligible, and the claim must also win the account's slot (`account_slot`):
/// at most one charge per account is in flight, in outbox order. The walk
/// starts at the first account and no liveness lock is stored: a dispatcher
/// keeps an [`AccountCursor`] and a lock, and calls [`claim_as`] instead.
pub async fn claim(
    conn: &mut PgConnection,
    owner: &str,
    lease: Duration,
    limit: i64,
    per_account_ordering: bool,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let holder = Holder {
        owner,
        lease,
        lock: None,
    };
    let mut cursor = AccountCursor::default();
    claim_as(
        conn,
        &holder,
        limit,
        per_account_ordering.then_some(&mut cursor),
    )
    .await
}

/// [`claim`] per account from `cursor`, with no liveness lock.
pub async fn claim_ordered(
    conn: &mut PgConnection,
    owner: &str,
    lease: Duration,
    limit: i64,
    cursor: &mut AccountCursor,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let holder = Holder {
        owner,
        lease,
        lock: None,
    };
    claim_as(conn, &holder, limit, Some(cursor)).await
}

/// Claim up to `limit` due rows for `holder`: the oldest due rows, or with a
/// `cursor` (per-account ordering) the heads of the accounts after it.
///
/// The per-account claim walks the accounts after the cursor for their heads
/// ([`heads`]), leases the eligible ones, and moves the cursor on. Two
/// statements, neither in a transaction: the lease re-checks under the row
/// lock that each row is still due and still its account's oldest open row,
/// and the slot's primary key keeps a second charge of an account out of
/// flight, so a change between them costs a row its turn, never the order.
pub async fn claim_as(
    conn: &mut PgConnection,
    holder: &Holder<'_>,
    limit: i64,
    cursor: Option<&mut AccountCursor>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let Some(cursor) = cursor else {
        return bind_lease(sqlx::query_as(CLAIM), holder, limit)
            .fetch_all(conn)
            .await;
    };
    let bound = walk_bound(limit);
    let mut candidates = Vec::new();
    let started_at_first = cursor.after.is_empty();
    let walk = heads(conn, &cursor.after, bound, limit).await?;
    let mut behind = left_behind(&walk);
    let end_reached = ran_off_the_end(&walk, bound, limit);
    cursor.after = advance(&walk, limit, end_reached, &mut candidates);
    cursor.cut_short = walk.len() as i64 >= bound && (candidates.len() as i64) < limit;
    // The walk ran off the end before the batch filled: go round once more
    // from the first account, for what is left.
    if end_reached && !started_at_first && (candidates.len() as i64) < limit {
        let rest = limit - candidates.len() as i64;
        let walk = heads(conn, "", bound, rest).await?;
        behind.extend(left_behind(&walk));
        let end_reached = ran_off_the_end(&walk, bound, rest);
        let mut more = Vec::new();
        cursor.after = advance(&walk, rest, end_reached, &mut more);
        cursor.cut_short = walk.len() as i64 >= bound && (more.len() as i64) < rest;
        more.retain(|id| !candidates.contains(id));
        candidates.extend(more);
    }
    heads::tidy(conn, &behind).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    bind_lease(sqlx::query_as(LEASE_HEADS), holder, &candidates)
        .fetch_all(conn)
        .await
}

/// Bind the parameters of the statements that lease rows ([`CLAIM`], `$3`
/// the limit; [`LEASE_HEADS`], `$3` the heads' ids; also for
/// `crate::explain`): the holder's name and lease, `$3`, a new lease token,
/// the holder's liveness key.
pub(crate) fn bind_lease<'q, O, T>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    holder: &Holder<'q>,
    third: T,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    query
        .bind(holder.owner)
        .bind(holder.lease.as_secs_f64())
        .bind(third)
        .bind(Uuid::new_v4())
        .bind(holder.lock)
}

/// Take eligible heads in account order into `candidates`, up to `limit`;
/// the cursor after this walk: the last account taken once the batch is
/// full, else the last account walked, else (the end reached) the start.
fn advance(walk: &[Head], limit: i64, end_reached: bool, candidates: &mut Vec<i64>) -> String {
    for head in walk {
        if candidates.len() as i64 >= limit {
            break;
        }
        if let (true, Some(id)) = (head.eligible, head.id) {
            candidates.push(id);
            if candidates.len() as i64 >= limit {
                return head.account_id.clone();
            }
        }
    }
    match walk.last() {
        Some(last) if !end_reached => last.account_id.clone(),
        _ => String::new(),
    }
}

/// An account of `account_head` and its oldest open row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Head {
    /// The account.
    pub account_id: String,
    /// Its oldest open (`pending`, `in_flight`, `unknown`) row; None: it has
    /// none left (its row is to be deleted).
    pub id: Option<i64>,
    /// Whether that row may be claimed now: not in flight, and due.
    pub eligible: bool,
    /// The account's floor (a lower bound of its open ids) when walked.
    pub floor: i64,
    /// The account row's version when walked.
    pub version: i64,
}

/// The accounts of `walk` whose row should be told what the walk found: a
/// head above the floor, or no open row at all.
fn left_behind(walk: &[Head]) -> Vec<Behind> {
    walk.iter()
        .filter(|h| h.id.is_none_or(|id| id > h.floor))
        .map(|h| Behind {
            account_id: h.account_id.clone(),
            version: h.version,
            head: h.id,
        })
        .collect()
}

/// Accounts with open work after `after`, in account order, each with its
/// head: up to `bound` accounts, or fewer once `limit` heads are claimable.
/// A recursive walk: each step is one descent of `account_head`'s primary
/// key to the next account, then one of `outbox_open_by_account` from that
/// account's floor to its head.
pub async fn heads(
    conn: &mut PgConnection,
    after: &str,
    bound: i64,
    limit: i64,
) -> Result<Vec<Head>, sqlx::Error> {
    sqlx::query_as(HEADS)
        .bind(after)
        .bind(bound)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Whether a walk of `walk` (bounded by `bound` accounts and `limit` heads)
/// stopped because there were no more accounts.
fn ran_off_the_end(walk: &[Head], bound: i64, limit: i64) -> bool {
    let claimable = walk.iter().filter(|h| h.eligible).count() as i64;
    (walk.len() as i64) < bound && claimable < limit
}

/// The statements a claim runs, for `idem bench` to show their plans: the
/// unordered claim (`$1` owner, `$2` lease in seconds, `$3` limit, `$4`
/// lease token, `$5` liveness lock), or, per account, the walk (`$1` cursor,
/// `$2` most accounts, `$3` most claimable heads) and the lease (`$3` the
/// heads' ids).
pub fn claim_sql(per_account_ordering: bool) -> &'static [&'static str] {
    if per_account_ordering {
        &[HEADS, LEASE_HEADS]
    } else {
        &[CLAIM]
    }
}

/// `UPDATE ... FROM <chosen>` that turns the chosen rows into leased ones.
macro_rules! lease_rows {
    ($chosen:literal) => {
        concat!(
            "UPDATE outbox o SET
                 state = 'in_flight', attempts = o.attempts + 1,
                 lease_owner = $1, lease_token = $4, lease_lock = $5, lease_lock_token = $4,
                 lease_expires_at = now() + make_interval(secs => $2),
                 updated_at = now()
             FROM ",
            $chosen,
            " chosen WHERE o.id = chosen.id
             RETURNING o.id, o.lease_token, o.scope, o.message_id, o.reference_id, o.account_id,
                       o.amount, o.currency, o.attempts, o.uncertain_since, o.traceparent"
        )
    };
}

const CLAIM: &str = concat!(
    "WITH due AS (
         SELECT id FROM outbox
         WHERE state IN ('pending', 'unknown') AND next_attempt_at <= now()
         ORDER BY next_attempt_at, id
         LIMIT $3
         FOR UPDATE SKIP LOCKED
     ) ",
    lease_rows!("due")
);

/// The head of the account in `h` (its oldest open row at or above its
/// floor) and whether it is claimable, for the walk below.
macro_rules! head_of {
    ($h:literal) => {
        concat!(
            "LEFT JOIN LATERAL (
                 SELECT o.id, o.state IN ('pending', 'unknown') AND o.next_attempt_at <= now() AS eligible
                 FROM outbox o
                 WHERE o.account_id = ",
            $h,
            ".account_id AND o.id >= ",
            $h,
            ".floor
                   AND o.state IN ('pending', 'in_flight', 'unknown')
                 ORDER BY o.id LIMIT 1) hd ON true"
        )
    };
}

/// The walk: each step descends `account_head`'s primary key to the next
/// account, then `outbox_open_by_account` from that account's floor to its
/// head (oldest open row), and stops after `$2` accounts or `$3` claimable
/// heads, whichever comes first (or at the last account). Neither descent
/// meets settled rows: `account_head` holds the accounts with open work, and
/// the entries of an account's settled rows lie below its floor.
const HEADS: &str = concat!(
    "WITH RECURSIVE walk(account_id, id, eligible, floor, version, n, taken) AS (
         (SELECT a.account_id, hd.id, coalesce(hd.eligible, false), a.floor, a.version, 1::bigint,
                 coalesce(hd.eligible, false)::int::bigint
          FROM (SELECT account_id, floor, version FROM account_head
                WHERE account_id > $1 ORDER BY account_id LIMIT 1) a ",
    head_of!("a"),
    ")
       UNION ALL
         SELECT a.account_id, hd.id, coalesce(hd.eligible, false), a.floor, a.version, w.n + 1,
                w.taken + coalesce(hd.eligible, false)::int
         FROM walk w
         CROSS JOIN LATERAL (
             SELECT account_id, floor, version FROM account_head
             WHERE account_id > w.account_id ORDER BY account_id LIMIT 1) a ",
    head_of!("a"),
    "
         WHERE w.n < $2 AND w.taken < $3
     )
     SELECT account_id, id, eligible, floor, version FROM walk ORDER BY account_id"
);

/// The lease of walked heads. Under the row lock the row is checked again:
/// still due, and still its account's oldest open row (an older one appears
/// when an operator retries an older `dead` row, or an older insert commits
/// late). The slot's primary key is the guarantee that an account has one
/// row in flight, even when two claimers' snapshots disagree.
///
/// Written so that no plan of it reads more than the heads, whatever the
/// statistics say. Each head is fetched by its id alone, in a subquery the
/// planner can neither flatten nor push a predicate into (`OFFSET 0`, and it
/// locks), so the primary key is the only way in; and the head check is a
/// scalar probe of `outbox_open_by_account` from the account's floor
/// ([`crate::heads`]), run once per head (no floor, no lease: an account
/// with open work always has one).
/// The earlier form (`id = ANY($3) AND state IN … AND NOT EXISTS (older
/// open row)`) was planned, under statistics taken while the queue was empty,
/// as a scan of every due row filtered by the id list with a full scan of the
/// open-rows index per row: 25.7 million buffers for 512 heads over a backlog
/// of 50,000 (`skew.rs`, the statistics test; docs/performance.md, the stall
/// of the 10-minute run).
const LEASE_HEADS: &str = concat!(
    "WITH due AS (
         SELECT l.id, l.account_id
         FROM (SELECT DISTINCT unnest($3::bigint[]) AS id ORDER BY 1) h
         CROSS JOIN LATERAL (
             SELECT o.id, o.account_id, o.state, o.next_attempt_at FROM outbox o
             WHERE o.id = h.id
             OFFSET 0
             FOR UPDATE SKIP LOCKED) l
         WHERE l.state IN ('pending', 'unknown') AND l.next_attempt_at <= now()
           AND l.id = (SELECT older.id FROM outbox older
                       WHERE older.account_id = l.account_id
                         AND older.id >= (SELECT hd.floor FROM account_head hd
                                          WHERE hd.account_id = l.account_id)
                         AND older.state IN ('pending', 'in_flight', 'unknown')
                       ORDER BY older.id LIMIT 1)
     ), slot AS (
         INSERT INTO account_slot (account_id, outbox_id)
         SELECT account_id, id FROM due
         ON CONFLICT (account_id) DO NOTHING
         RETURNING outbox_id AS id
     ) ",
    lease_rows!("slot")
);

#[cfg(test)]
mod tests {
    use super::*;

    fn head(account: &str, id: i64, eligible: bool) -> Head {
        Head {
            account_id: account.to_owned(),
            id: Some(id),
            eligible,
            floor: id,
            version: 1,
        }
    }

    #[test]
    fn a_walk_leaves_behind_floors_below_their_head_and_accounts_without_work() {
        let lagging = Head {
            floor: 3,
            ..head("b", 7, true)
        };
        let empty = Head {
            id: None,
            eligible: false,
            ..head("c", 9, false)
        };
        let walk = [head("a", 1, true), lagging, empty];
        let behind: Vec<_> = left_behind(&walk)
            .into_iter()
            .map(|b| (b.account_id, b.head))
            .collect();
        assert_eq!(
            behind,
            [("b".to_owned(), Some(7)), ("c".to_owned(), None)],
            "a head at its floor is not behind"
        );
    }

    #[test]
    fn a_full_batch_leaves_the_cursor_at_the_last_account_taken() {
        let walk = [
            head("a", 1, true),
            head("b", 2, false),
            head("c", 3, true),
            head("d", 4, true),
        ];
        let mut taken = Vec::new();
        assert_eq!(advance(&walk, 2, false, &mut taken), "c");
        assert_eq!(taken, [1, 3]);
    }

    #[test]
    fn a_short_batch_moves_the_cursor_past_everything_walked() {
        let walk = [head("a", 1, false), head("b", 2, true)];
        let mut taken = Vec::new();
        assert_eq!(advance(&walk, 5, false, &mut taken), "b");
        assert_eq!(taken, [2]);
    }

    #[test]
    fn a_walk_that_stopped_at_its_bound_or_a_full_batch_did_not_reach_the_end() {
        let walk = [head("a", 1, true), head("b", 2, false)];
        assert!(ran_off_the_end(&walk, 3, 2), "short of both bounds");
        assert!(
            !ran_off_the_end(&walk, 2, 5),
            "stopped at the account bound"
        );
        assert!(!ran_off_the_end(&walk, 5, 1), "stopped at a full batch");
    }

    #[test]
    fn the_end_of_the_accounts_wraps_the_cursor() {
        let walk = [head("a", 1, false), head("b", 2, true)];
        let mut taken = Vec::new();
        assert_eq!(advance(&walk, 5, true, &mut taken), "");
        assert_eq!(advance(&[], 5, true, &mut taken), "");
    }
}
