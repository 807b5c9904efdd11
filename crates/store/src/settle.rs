//! Recording many attempts' results in one statement: the dispatcher's group
//! commit. Same fence and same effects as [`crate::outbox::settle`] row by
//! row — a result is written only where the row is still `in_flight` under
//! the holder's lease token, and its account slot is freed with it — but one
//! round trip for a whole batch of results. With per-account ordering, the
//! same statement can lease each account's next charge to the replica
//! ([`settle_and_chain`]).

use std::sync::LazyLock;

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use crate::attempt::{self, NewAttempt};
use crate::heads::move_on;
use crate::outbox::{Claimed, Settlement};
use crate::quarantine::{sanitize, sanitize_json};

/// One result to record: the row, the holder's lease token, the outcome.
#[derive(Debug, Clone, Copy)]
pub struct Fenced<'a> {
    /// Outbox row id.
    pub id: i64,
    /// The lease token the result was obtained under.
    pub token: Uuid,
    /// What to record.
    pub settlement: &'a Settlement,
    /// Whether, if this leaves the row final, the account's next head is to
    /// be leased to the same replica ([`settle_and_chain`]).
    pub chain: bool,
}

/// The group settle, with the attempt-history insert as its first CTE
/// (parameters 9..16); built once: it runs for every group of results.
///
/// With chaining (`$17`, per row; `$18` the lease in seconds, `$19` the
/// liveness key): a row that reaches a final state hands its account's slot
/// to the account's next head and leases that row to the same replica, in
/// the same statement — per-account ordering without a claim round trip
/// between two charges of one account. The next head is the account's
/// smallest open id but the settled row's, found from the account's floor
/// ([`HEADS_MOVE_ON`]), due, not locked by anyone; the slot
/// moves only from the row being settled, so "one in flight per account"
/// holds as for a claim.
static SETTLE_CHAINED: LazyLock<String> = LazyLock::new(|| settle_sql(true));

/// The accounts whose rows the settle finished move on
/// ([`crate::heads`]): each one's next open row, found from its floor (the
/// statement's snapshot still shows the rows it settles as open, so they
/// are left out by id), becomes its floor, or without one the account's
/// row goes — where the row's `version` is still the one read with those
/// rows, and no one else holds it (an insert batch of the account in
/// progress changes the version anyway; the claim's tidy deals with what a
/// skipped row lags behind). The chained settle's next heads are these
/// `next` rows.
const HEADS_MOVE_ON: &str = concat!(
    ", ended AS (
         SELECT account_id, array_agg(id) AS ids, min(id) FILTER (WHERE chains) AS chain_from
         FROM settled WHERE final GROUP BY account_id
     ), floors AS (
         SELECT e.account_id, h.version, n.id AS next, e.chain_from
         FROM ended e JOIN account_head h ON h.account_id = e.account_id
         LEFT JOIN LATERAL (
             SELECT o.id FROM outbox o
             WHERE o.account_id = e.account_id AND o.id >= h.floor
               AND o.state IN ('pending', 'in_flight', 'unknown') AND o.id <> ALL (e.ids)
             ORDER BY o.id LIMIT 1) n ON true
     ), ",
    move_on!("floors")
);

/// The same without chaining: no chain column, no CTE of the chain (each
/// would cost every settle its executor set-up even when empty).
static SETTLE_PLAIN: LazyLock<String> = LazyLock::new(|| settle_sql(false));

/// The group settle's SQL, with or without the chain (see [`SETTLE_CHAINED`]).
fn settle_sql(chain: bool) -> String {
    let (chain_column, chain_name, chains) = if chain {
        (", $17::bool[]", ", chain", "x.chain AND x.kind <> 'retry'")
    } else {
        ("", "", "false")
    };
    let settle = format!(
        "WITH calls AS ({calls}), locked AS MATERIALIZED (
             -- The batch joined to its rows and locked in id order, as the
             -- inbox's duplicates lock them (`batch::on_duplicates`): two
             -- transactions over the same rows then queue instead of
             -- deadlocking. The fence (still in flight, under the holder's
             -- token) is checked in `x`, on the row's latest version (the CTE
             -- is materialized, so no condition of `x` reaches the scan
             -- below the lock), and each row carries its result: no
             -- step of this statement then offers the planner anything but
             -- a probe of `outbox_pkey` per result (or, for a table that
             -- is small, one scan of it; not on the dispatcher's own
             -- connections, `db::DISPATCH_SESSION`, where a plan made on a
             -- small table is kept once it is large). docs/performance.md, The
             -- settle's join: a generic plan guesses 10 rows for an
             -- `unnest`, statistics may say no row is in flight, and a
             -- join of the results against `outbox_lease` ran as a nested
             -- loop over the batch per row in flight.
             SELECT b.*, o.state AS held_state, o.lease_token AS held_token
             FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                         $6::text[], $7::float8[], $8::bool[]{chain_column})
                  AS b(id, token, kind, charge_id, result, error, delay, uncertain{chain_name})
             JOIN outbox o ON o.id = b.id
             ORDER BY o.id
             FOR NO KEY UPDATE OF o
         ), x AS (
             SELECT * FROM locked WHERE held_state = 'in_flight' AND held_token = token
         ), settled AS (
             UPDATE outbox o SET
                 state = (CASE x.kind
                     WHEN 'retry' THEN CASE WHEN x.uncertain OR o.uncertain_since IS NOT NULL
                                            THEN 'unknown' ELSE 'pending' END
                     ELSE x.kind END)::outbox_state,
                 provider_charge_id = CASE WHEN x.kind = 'succeeded' THEN x.charge_id
                                           ELSE o.provider_charge_id END,
                 result = CASE WHEN x.kind IN ('succeeded', 'declined') THEN x.result ELSE o.result END,
                 last_error = CASE x.kind WHEN 'succeeded' THEN NULL WHEN 'declined' THEN o.last_error
                                          ELSE x.error END,
                 settled_at = CASE WHEN x.kind = 'retry' THEN o.settled_at ELSE now() END,
                 uncertain_since = CASE WHEN x.kind = 'retry' AND x.uncertain
                                        THEN coalesce(o.uncertain_since, now()) ELSE o.uncertain_since END,
                 next_attempt_at = CASE WHEN x.kind = 'retry' THEN now() + make_interval(secs => x.delay)
                                        ELSE o.next_attempt_at END,
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM x
             WHERE o.id = x.id
             RETURNING o.id, o.account_id, x.kind <> 'retry' AS final, {chains} AS chains
         ){heads}",
        heads = HEADS_MOVE_ON,
        calls = attempt::insert_sql(9),
    );
    if !chain {
        return settle
            + ", freed AS (
             DELETE FROM account_slot sl USING settled s
             WHERE sl.account_id = s.account_id AND sl.outbox_id = s.id
         )
         SELECT id FROM settled";
    }
    settle
        + ", heads AS (
             -- From `floors` alone: a join of two CTEs is what a generic
             -- plan runs as a nested loop over the batch.
             SELECT f.chain_from AS settled_id, f.next AS id
             FROM floors f
             WHERE f.chain_from IS NOT NULL AND f.next IS NOT NULL
         ), ahead AS MATERIALIZED (
             -- Each head carries its settled row along (as `locked` carries
             -- the results), locked before it is judged due in `next`, as
             -- the fence is judged in `x`: the only way into `outbox` is its
             -- primary key, never `outbox_due`'s walk over the backlog. A
             -- head that is not due stays locked until the commit, a few
             -- milliseconds.
             SELECT o.id, o.account_id, o.state, o.next_attempt_at, h.settled_id
             FROM heads h JOIN outbox o ON o.id = h.id
             ORDER BY o.id
             FOR UPDATE OF o SKIP LOCKED
         ), next AS (
             SELECT a.id, a.account_id, a.settled_id, gen_random_uuid() AS token FROM ahead a
             WHERE a.state IN ('pending', 'unknown') AND a.next_attempt_at <= now()
         ), moved AS (
             UPDATE account_slot sl SET outbox_id = n.id, claimed_at = now()
             FROM next n
             WHERE sl.account_id = n.account_id AND sl.outbox_id = n.settled_id
             RETURNING sl.outbox_id AS id, n.settled_id, n.token
         ), freed AS (
             DELETE FROM account_slot sl USING settled s
             WHERE sl.account_id = s.account_id AND sl.outbox_id = s.id
               AND s.id NOT IN (SELECT settled_id FROM moved)
         ), chained AS (
             UPDATE outbox o SET
                 state = 'in_flight', attempts = o.attempts + 1,
                 lease_owner = $9, lease_token = m.token, lease_lock = $19,
                 lease_lock_token = m.token,
                 lease_expires_at = now() + make_interval(secs => $18), updated_at = now()
             FROM moved m WHERE o.id = m.id
             RETURNING m.settled_id, o.id, o.lease_token, o.scope, o.message_id, o.reference_id,
                       o.account_id, o.amount, o.currency, o.attempts, o.uncertain_since,
                       o.traceparent
         )
         -- A row each: settled alone, or settled and chained. Not a join of
         -- the two CTEs, which a generic plan would run as a nested loop.
         SELECT s.id AS settled_id, NULL::bigint AS id, NULL::uuid AS lease_token,
                NULL::text AS scope, NULL::text AS message_id, NULL::uuid AS reference_id,
                NULL::text AS account_id, NULL::int8 AS amount, NULL::text AS currency,
                NULL::int4 AS attempts, NULL::timestamptz AS uncertain_since,
                NULL::text AS traceparent
         FROM settled s WHERE s.id NOT IN (SELECT settled_id FROM chained)
         UNION ALL
         SELECT c.settled_id, c.id, c.lease_token, c.scope, c.message_id, c.reference_id,
                c.account_id, c.amount, c.currency, c.attempts, c.uncertain_since, c.traceparent
         FROM chained c"
}

/// Chaining for [`settle_and_chain`]: the lease of the next heads, and the
/// liveness key to store on them.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    /// How long the chained rows are leased.
    pub lease: std::time::Duration,
    /// The replica's liveness key, if it holds its lock.
    pub lock: Option<i64>,
}

/// A result the fence accepted, and the next row of its account leased to
/// the same replica, if chaining was asked and there was one.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The row recorded.
    pub id: i64,
    /// Its account's next head, now in flight under a new lease.
    pub next: Option<Claimed>,
}

/// The row the statement returns: the settled id, and the chained row's
/// columns (all NULL when nothing was chained).
#[derive(sqlx::FromRow)]
struct Row {
    settled_id: i64,
    id: Option<i64>,
    lease_token: Option<Uuid>,
    scope: Option<String>,
    message_id: Option<String>,
    reference_id: Option<Uuid>,
    account_id: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    attempts: Option<i32>,
    uncertain_since: Option<chrono::DateTime<chrono::Utc>>,
    traceparent: Option<String>,
}

impl Row {
    fn settled(self) -> Settled {
        let next = (|| {
            Some(Claimed {
                id: self.id?,
                lease_token: self.lease_token?,
                scope: self.scope?,
                message_id: self.message_id?,
                reference_id: self.reference_id?,
                account_id: self.account_id?,
                amount: self.amount?,
                currency: self.currency?,
                attempts: self.attempts?,
                uncertain_since: self.uncertain_since,
                traceparent: self.traceparent,
            })
        })();
        Settled {
            id: self.settled_id,
            next,
        }
    }
}

/// Record every result of `batch` whose lease still holds; returns the ids
/// recorded (the others were refused by the fence). Rows must be distinct.
/// In the same statement, `calls` (the attempts' provider calls, made by
/// `replica`) go into the attempt history, fence or not: the calls happened.
pub async fn settle_many(
    conn: &mut PgConnection,
    batch: &[Fenced<'_>],
    replica: &str,
    calls: &[NewAttempt],
) -> Result<Vec<i64>, sqlx::Error> {
    let ids: Vec<(i64,)> = bind(
        sqlx::query_as(statement(false)),
        batch,
        replica,
        calls,
        None,
    )
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// [`settle_many`], and for every result with `chain` set that leaves its
/// row final (succeeded, declined, dead), the account's next head leased to
/// `replica` under `chain` (see [`SETTLE_CHAINED`]).
pub async fn settle_and_chain(
    conn: &mut PgConnection,
    batch: &[Fenced<'_>],
    replica: &str,
    calls: &[NewAttempt],
    chain: Option<Chain>,
) -> Result<Vec<Settled>, sqlx::Error> {
    let Some(chain) = chain else {
        let ids = settle_many(conn, batch, replica, calls).await?;
        return Ok(ids
            .into_iter()
            .map(|id| Settled { id, next: None })
            .collect());
    };
    let rows: Vec<Row> = bind(
        sqlx::query_as(statement(true)),
        batch,
        replica,
        calls,
        Some(chain),
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Row::settled).collect())
}

/// The group settle's SQL, chained or not (also for `crate::explain` and
/// the `plans` suite).
pub fn statement(chained: bool) -> &'static str {
    if chained {
        SETTLE_CHAINED.as_str()
    } else {
        SETTLE_PLAIN.as_str()
    }
}

/// Bind every parameter of [`statement`]`(chain.is_some())`: the batch
/// column by column, one array each, the calls, and the chain's. `SET` reads
/// the row's old values, as the single-row statements do. Final states are
/// written with the trigger of the result events firing per row, as for
/// single settles.
pub(crate) fn bind<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    batch: &[Fenced<'_>],
    replica: &'q str,
    calls: &[NewAttempt],
    chain: Option<Chain>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let mut cols = Columns::default();
    for f in batch {
        cols.push(f, chain.is_some());
    }
    let history = attempt::Columns::of(calls);
    let chains = std::mem::take(&mut cols.chain);
    let query = query
        .bind(cols.id)
        .bind(cols.token)
        .bind(cols.kind)
        .bind(cols.charge_id)
        .bind(cols.result)
        .bind(cols.error)
        .bind(cols.delay)
        .bind(cols.uncertain)
        .bind(replica)
        .bind(history.outbox_id)
        .bind(history.kind)
        .bind(history.started_at)
        .bind(history.latency_ms)
        .bind(history.http_status)
        .bind(history.error)
        .bind(history.provider_id);
    match chain {
        None => query,
        Some(chain) => query
            .bind(chains)
            .bind(chain.lease.as_secs_f64())
            .bind(chain.lock),
    }
}

/// The batch as one array per column.
#[derive(Default)]
struct Columns {
    id: Vec<i64>,
    token: Vec<Uuid>,
    kind: Vec<&'static str>,
    charge_id: Vec<Option<String>>,
    result: Vec<Option<serde_json::Value>>,
    error: Vec<Option<String>>,
    delay: Vec<f64>,
    uncertain: Vec<bool>,
    chain: Vec<bool>,
}

impl Columns {
    fn push(&mut self, f: &Fenced<'_>, chain: bool) {
        self.id.push(f.id);
        self.chain.push(chain && f.chain);
        self.token.push(f.token);
        let (kind, charge_id, result, error, delay, uncertain) = match f.settlement {
            Settlement::Succeeded { charge_id, result } => (
                "succeeded",
                Some(sanitize(charge_id)),
                Some(sanitize_json(result)),
                None,
                0.0,
                false,
            ),
            Settlement::Declined { result } => (
                "declined",
                None,
                Some(sanitize_json(result)),
                None,
                0.0,
                false,
            ),
            Settlement::Retry {
                uncertain,
                error,
                delay,
            } => (
                "retry",
                None,
                None,
                Some(sanitize(error)),
                delay.as_secs_f64(),
                *uncertain,
            ),
            Settlement::Dead { error } => ("dead", None, None, Some(sanitize(error)), 0.0, false),
        };
        self.kind.push(kind);
        self.charge_id.push(charge_id);
        self.result.push(result);
        self.error.push(error);
        self.delay.push(delay);
        self.uncertain.push(uncertain);
    }
}
