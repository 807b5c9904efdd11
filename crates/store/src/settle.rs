//! Recording many attempts' results in one statement: the dispatcher's group
//! commit. Same fence and same effects as [`crate::outbox::settle`] row by
//! row — a result is written only where the row is still `in_flight` under
//! the holder's lease token, and its account slot is freed with it — but one
//! round trip for a whole batch of results.

use std::sync::LazyLock;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::attempt::{self, NewAttempt};
use crate::outbox::Settlement;
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
}

/// The group settle, with the attempt-history insert as its first CTE
/// (parameters 9..16); built once: it runs for every group of results.
static SETTLE_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH calls AS ({}), x AS (
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::text[], $7::float8[], $8::bool[])
                 AS x(id, token, kind, charge_id, result, error, delay, uncertain)
         ), locked AS (
             -- Rows locked in id order, as the inbox's duplicates lock them
             -- (`batch::on_duplicates`): two transactions over the same rows
             -- then queue instead of deadlocking.
             SELECT o.id FROM outbox o WHERE o.id IN (SELECT id FROM x) ORDER BY o.id FOR NO KEY UPDATE
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
             FROM x JOIN locked l ON l.id = x.id
             WHERE o.id = x.id AND o.lease_token = x.token AND o.state = 'in_flight'
             RETURNING o.id
         ), freed AS (
             DELETE FROM account_slot WHERE outbox_id IN (SELECT id FROM settled)
         )
         SELECT id FROM settled",
        attempt::insert_sql(9)
    )
});

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
    let mut cols = Columns::default();
    for f in batch {
        cols.push(f);
    }
    let history = attempt::Columns::of(calls);
    // Column by column, one array each; `SET` reads the row's old values, as
    // the single-row statements do. Final states are written with the
    // trigger of the result events firing per row, as for single settles.
    sqlx::query_scalar(SETTLE_MANY.as_str())
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
        .bind(history.provider_id)
        .fetch_all(conn)
        .await
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
}

impl Columns {
    fn push(&mut self, f: &Fenced<'_>) {
        self.id.push(f.id);
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
