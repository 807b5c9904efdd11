//! Per-account queue heads: `account_head`, one row per account with open
//! work, whose `floor` is a lower bound of the account's open ids
//! (migrations/20261203120000_account_heads.sql; docs/performance.md,
//! "Claims under skew: heads").
//!
//! Every lookup of an account's head (the claim's walk, the lease's check
//! that a row is still its account's oldest open row, the chained settle's
//! next head) descends `outbox_open_by_account` at `(account, floor)`, not
//! at the account's start: the index entries of the account's settled rows,
//! which stay until `outbox` is vacuumed and all sit below the head, are
//! never stepped over.
//!
//! Who keeps the bound true: triggers on `outbox`, for every writer. A row
//! that becomes open lowers its account's floor to its id if need be (or
//! creates the account's row) and gives `version` a new value of a sequence
//! (never one a row had, so a row deleted and created again never looks
//! unchanged). Who raises it, or deletes
//! a row whose account has no open work left: the group settle
//! ([`crate::settle`], for the accounts whose rows it finished) and
//! [`tidy`] (for what the claim's walk found behind), each only where
//! `version` is still the one read with the open rows it judged by. A row
//! made open since then has changed it (its trigger ran and committed, or
//! holds the account's row until it commits; the update waits for it and
//! re-reads the latest version), so the raise is not made; a row whose
//! trigger has yet to run lowers the floor again, or recreates the account's
//! row, when it does. A floor that lags behind the head costs a few steps
//! over the index; it is never above an open row.

use sqlx::PgConnection;

/// What a walk saw of one account that its row should be told: its open
/// rows now start at `head` (raise the floor to it), or, with `head` None,
/// there are none (delete the row), as of `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    /// The account.
    pub account_id: String,
    /// The row's `version` when the walk read it.
    pub version: i64,
    /// The account's oldest open row at or above the floor, if any.
    pub head: Option<i64>,
}

/// Raise the floors of accounts whose head is above it and delete the rows
/// of accounts without open work, each only if its `version` is still the
/// one seen (see the module notes). Returns how many rows were changed.
/// One statement, which never waits: a row another writer holds is left
/// as it is.
pub async fn tidy(conn: &mut PgConnection, behind: &[Behind]) -> Result<u64, sqlx::Error> {
    if behind.is_empty() {
        return Ok(0);
    }
    bind_tidy(sqlx::query_scalar(TIDY), behind)
        .fetch_one(conn)
        .await
        .map(|n: i64| n.unsigned_abs())
}

/// Bind [`TIDY`]'s parameters (also for `crate::explain`): the accounts,
/// their versions and heads, one array each.
pub(crate) fn bind_tidy<'q, O>(
    query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    behind: &'q [Behind],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let mut accounts = Vec::with_capacity(behind.len());
    let mut versions = Vec::with_capacity(behind.len());
    let mut heads = Vec::with_capacity(behind.len());
    for b in behind {
        accounts.push(b.account_id.as_str());
        versions.push(b.version);
        heads.push(b.head);
    }
    query.bind(accounts).bind(versions).bind(heads)
}

/// `held`, `raised` and `emptied`, after a CTE named `$seen` of
/// `(account_id, version, next)`: the account rows whose `version` is still
/// `version` are locked, skipping those another writer holds, then raised
/// to `next` or, with `next` NULL (no open row), deleted. Locking re-reads a
/// row changed since the statement's snapshot and judges `version` on that
/// latest version. For the claim's tidy below and the group settle
/// ([`crate::settle`]).
macro_rules! move_on {
    ($seen:literal) => {
        concat!(
            "held AS MATERIALIZED (
                 SELECT h.account_id, s.next
                 FROM ",
            $seen,
            " s JOIN account_head h ON h.account_id = s.account_id AND h.version = s.version
                 ORDER BY h.account_id
                 FOR UPDATE OF h SKIP LOCKED
             ), raised AS (
                 UPDATE account_head h SET floor = l.next FROM held l
                 WHERE h.account_id = l.account_id AND l.next > h.floor
                 RETURNING 1
             ), emptied AS (
                 DELETE FROM account_head h USING held l
                 WHERE h.account_id = l.account_id AND l.next IS NULL
                 RETURNING 1
             )"
        )
    };
}
pub(crate) use move_on;

/// A row another writer holds (an insert batch of the account in progress:
/// its trigger changes the version anyway, and the next walk sees what is
/// left) is skipped, so a claim never waits here.
pub(crate) const TIDY: &str = concat!(
    "WITH seen AS (
         SELECT DISTINCT ON (account_id) account_id, version, next
         FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS s(account_id, version, next)
         ORDER BY account_id
     ), ",
    move_on!("seen"),
    "
     SELECT (SELECT count(*) FROM raised) + (SELECT count(*) FROM emptied)"
);
