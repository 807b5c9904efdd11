//! Counts for `idem status` and the demo's report ([`read`]: exact, reads
//! whole tables), and the table gauges' sample ([`sample`]: bounded by open
//! work, estimates for the history).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;

use crate::outbox::OutboxState;

/// A snapshot of the tables' counts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    /// Distinct keys recorded.
    pub inbox_keys: i64,
    /// Deliveries absorbed as duplicates (same key, same payload).
    pub duplicates: i64,
    /// Deliveries refused as key conflicts (same key, other payload).
    pub conflicts: i64,
    /// Messages in quarantine.
    pub quarantined: i64,
    /// Outbox rows per state (every state present, zero when empty).
    pub outbox: BTreeMap<String, i64>,
    /// `in_flight` rows whose lease has expired (waiting for the rescuer).
    pub expired_leases: i64,
}

impl Status {
    /// Outbox rows in `state`.
    pub fn outbox_in(&self, state: OutboxState) -> i64 {
        self.outbox.get(state.as_str()).copied().unwrap_or(0)
    }

    /// Rows not yet in a final state.
    pub fn open_rows(&self) -> i64 {
        [
            OutboxState::Pending,
            OutboxState::InFlight,
            OutboxState::Unknown,
        ]
        .into_iter()
        .map(|s| self.outbox_in(s))
        .sum()
    }
}

/// Read the exact counts: aggregate queries over every row of the inbox,
/// quarantine and outbox, so seconds on tables of millions of rows. Meant for
/// an operator asking (`idem status`) and for tests, never for a periodic
/// job: the sampler uses [`sample`].
pub async fn read(conn: &mut PgConnection) -> Result<Status, sqlx::Error> {
    let (inbox_keys, duplicates, conflicts): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(duplicates), 0)::bigint, coalesce(sum(conflicts), 0)::bigint FROM inbox",
    )
    .fetch_one(&mut *conn)
    .await?;
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine")
        .fetch_one(&mut *conn)
        .await?;
    let rows: Vec<(OutboxState, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM outbox GROUP BY state")
            .fetch_all(&mut *conn)
            .await?;
    let expired_leases: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_expires_at < now()",
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut outbox: BTreeMap<String, i64> = OutboxState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (state, n) in rows {
        outbox.insert(state.as_str().to_owned(), n);
    }
    Ok(Status {
        inbox_keys,
        duplicates,
        conflicts,
        quarantined,
        outbox,
        expired_leases,
    })
}

/// What the table-gauge sampler reads every few seconds: exact counts where
/// a partial index bounds them to open work, estimates for the history
/// tables. Its cost does not grow with history (docs/operations.md,
/// "Metrics"); [`read`] is the exact, full-scan alternative for operators.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Outbox rows per state, in [`OutboxState::ALL`] order: `pending`,
    /// `in_flight`, `unknown` and `dead` exact; `succeeded` and `declined`
    /// estimated (see [`ESTIMATES_SQL`]).
    pub outbox: [i64; 6],
    /// `in_flight` rows whose lease has expired (exact).
    pub expired_leases: i64,
    /// Inbox keys (estimate).
    pub inbox_keys: i64,
    /// Quarantined messages (estimate).
    pub quarantined: i64,
}

impl Sample {
    /// Outbox rows in `state` (exact or estimated: see [`Sample::outbox`]).
    pub fn outbox_in(&self, state: OutboxState) -> i64 {
        OutboxState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.outbox[i])
    }
}

/// Whether the sampler's gauge for outbox rows in `state` is an estimate.
pub fn is_estimated(state: OutboxState) -> bool {
    matches!(state, OutboxState::Succeeded | OutboxState::Declined)
}

/// The open work, exactly. Each count has a partial index that holds only
/// rows of its state (`outbox_due`, `outbox_lease`, `outbox_dead`, see the
/// migrations), so it reads O(open rows), never the settled history. The
/// predicates must imply the indexes' for the planner to use them.
pub const OPEN_WORK_SQL: &str = "SELECT
    (SELECT count(*) FROM outbox WHERE state = 'pending'),
    (SELECT count(*) FROM outbox WHERE state = 'in_flight'),
    (SELECT count(*) FROM outbox WHERE state = 'unknown'),
    (SELECT count(*) FROM outbox WHERE state = 'dead'),
    (SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_expires_at < now())";

/// Row estimates of the history tables, from the catalog only (no table is
/// read): the planner's own estimate, i.e. the row density the last
/// VACUUM/ANALYZE measured (`reltuples / relpages`) times the table's size
/// now, so it follows growth between autovacuum runs and survives a crash
/// (which resets the statistics collector); a table never vacuumed nor
/// analyzed (new and small) has no density yet and takes the collector's
/// live-row count instead. Fourth column: the share of `declined` among
/// settled rows as the last ANALYZE sampled it (`pg_stats`), NULL before one.
pub const ESTIMATES_SQL: &str = "WITH est AS (
        SELECT c.oid,
               CASE WHEN c.reltuples >= 0 AND c.relpages > 0
                    THEN (c.reltuples / c.relpages
                          * (pg_relation_size(c.oid) / current_setting('block_size')::float8))::bigint
                    ELSE pg_stat_get_live_tuples(c.oid) END AS n
        FROM pg_class c
        WHERE c.oid IN ('outbox'::regclass, 'inbox'::regclass, 'quarantine'::regclass)
    ), mcv AS (
        SELECT m.v, m.f
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = c.relname
                       AND s.attname = 'state'
        CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS m(v, f)
        WHERE c.oid = 'outbox'::regclass
    )
    SELECT (SELECT n FROM est WHERE oid = 'outbox'::regclass),
           (SELECT n FROM est WHERE oid = 'inbox'::regclass),
           (SELECT n FROM est WHERE oid = 'quarantine'::regclass),
           (SELECT (sum(f) FILTER (WHERE v = 'declined'))::float8
                   / nullif(sum(f) FILTER (WHERE v IN ('succeeded', 'declined')), 0)
            FROM mcv)";

/// The sampler's statements, for tests that check their plans.
pub const SAMPLE_STATEMENTS: [&str; 2] = [OPEN_WORK_SQL, ESTIMATES_SQL];

/// Make the caller's transaction fit the sampler: a statement never runs
/// past `timeout` (the server cancels it, so the connection goes back to the
/// pool within the sampler's period), and a plan never scans a table
/// sequentially where an index can answer, whatever the statistics say
/// (`enable_seqscan` only discourages it: a statement with no usable index
/// would still scan, which the plan test catches).
pub async fn bound_for_sampling(
    conn: &mut PgConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    sqlx::query("SELECT set_config('statement_timeout', $1, true), set_config('enable_seqscan', 'off', true)")
        .bind(ms.to_string())
        .execute(conn)
        .await
        .map(|_| ())
}

/// Read the gauges' sample in one read-only transaction of its own, each
/// statement cut at `timeout`. O(open rows), whatever the history.
pub async fn sample(conn: &mut PgConnection, timeout: Duration) -> Result<Sample, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    bound_for_sampling(&mut tx, timeout).await?;
    let (pending, in_flight, unknown, dead, expired_leases): (i64, i64, i64, i64, i64) =
        sqlx::query_as(OPEN_WORK_SQL).fetch_one(&mut *tx).await?;
    let (outbox, inbox_keys, quarantined, declined_share): (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<f64>,
    ) = sqlx::query_as(ESTIMATES_SQL).fetch_one(&mut *tx).await?;
    // Read only: nothing to commit. A rollback also ends the `SET LOCAL`s, and
    // keeps the sampler's statements apart from every COMMIT idem sends
    // (the commit-cut suite cuts the first one it sees).
    tx.rollback().await?;
    let open = pending + in_flight + unknown + dead;
    let (succeeded, declined) = split_settled(outbox.unwrap_or(0) - open, declined_share);
    Ok(Sample {
        outbox: [pending, in_flight, unknown, succeeded, declined, dead],
        expired_leases,
        inbox_keys: inbox_keys.unwrap_or(0).max(0),
        quarantined: quarantined.unwrap_or(0).max(0),
    })
}

/// Split the estimated settled rows into (succeeded, declined) by the
/// declined share the statistics saw. Without statistics (a table not yet
/// analyzed, so small) every settled row counts as succeeded.
fn split_settled(settled: i64, declined_share: Option<f64>) -> (i64, i64) {
    let settled = settled.max(0);
    let share = declined_share.unwrap_or(0.0).clamp(0.0, 1.0);
    let declined = (settled as f64 * share).round() as i64;
    (settled - declined, declined)
}

#[cfg(test)]
mod tests {
    use super::split_settled;

    #[test]
    fn settled_rows_split_by_the_declined_share() {
        assert_eq!(split_settled(100, Some(0.25)), (75, 25));
        assert_eq!(split_settled(10, None), (10, 0));
        // Open rows counted exactly may outnumber a stale estimate.
        assert_eq!(split_settled(-5, Some(0.5)), (0, 0));
        assert_eq!(split_settled(7, Some(1.5)), (0, 7));
    }
}
