//! The console overview's figures beyond the gauges' sample (`status`):
//! rates over the last minute, how long work waits, the latest
//! reconciliation's report, quarantine and conflicts of the last day.
//!
//! Each statement reads a bounded window through an index: the rows of the
//! last minute or day (capped at [`COUNT_CAP`]), the last [`LAG_SAMPLE`]
//! settled rows, the head of the due index, the newest run. None of them
//! reads the history, so a page costs the same on a year of rows as on a
//! day's (`tests/tests/it/console_plans.rs` holds their plans to that).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// The most rows a windowed count reads: past it the page says "at least".
pub const COUNT_CAP: i64 = 100_000;

/// How many of the newest settled rows the lag figures are taken over.
pub const LAG_SAMPLE: i64 = 500;

/// Throughput and waiting, as the overview shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct Flow {
    /// Keys the inbox recorded in the last minute (at most [`COUNT_CAP`]).
    pub recorded_last_minute: i64,
    /// Outbox rows that reached a final state in the last minute (at most
    /// [`COUNT_CAP`]).
    pub settled_last_minute: i64,
    /// Seconds the oldest due row (pending or unknown) has been due.
    pub oldest_due_seconds: Option<f64>,
    /// Recorded → settled, median of the newest [`LAG_SAMPLE`] settled rows.
    pub settle_p50_seconds: Option<f64>,
    /// The same, 99th percentile.
    pub settle_p99_seconds: Option<f64>,
    /// Messages quarantined in the last 24 hours (at most [`COUNT_CAP`]).
    pub quarantined_last_day: i64,
    /// Key conflicts refused in the last 24 hours (at most [`COUNT_CAP`]).
    pub conflicts_last_day: i64,
}

/// The overview's statement: every figure of [`Flow`] in one round trip.
/// Each subquery's predicate implies its index's (`inbox_received_at`,
/// `outbox_settled`, `outbox_due`, `quarantine_received_at`,
/// `key_conflict_received_at`), and the counts are capped by `LIMIT`.
pub const FLOW_SQL: &str = "SELECT
    (SELECT count(*) FROM (SELECT 1 FROM inbox
        WHERE received_at >= now() - interval '1 minute' LIMIT $1) r) AS recorded_last_minute,
    (SELECT count(*) FROM (SELECT 1 FROM outbox
        WHERE state IN ('succeeded', 'declined', 'dead')
          AND settled_at >= now() - interval '1 minute' LIMIT $1) s) AS settled_last_minute,
    (SELECT extract(epoch FROM now() - min(next_attempt_at))::float8 FROM outbox
        WHERE state IN ('pending', 'unknown') AND next_attempt_at <= now()) AS oldest_due_seconds,
    l.p50 AS settle_p50_seconds, l.p99 AS settle_p99_seconds,
    (SELECT count(*) FROM (SELECT 1 FROM quarantine
        WHERE received_at >= now() - interval '1 day' LIMIT $1) q) AS quarantined_last_day,
    (SELECT count(*) FROM (SELECT 1 FROM key_conflict
        WHERE received_at >= now() - interval '1 day' LIMIT $1) c) AS conflicts_last_day
    FROM (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::float8 AS p50,
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::float8 AS p99
          FROM (SELECT extract(epoch FROM settled_at - created_at)::float8 AS d FROM outbox
                WHERE state IN ('succeeded', 'declined', 'dead') AND settled_at IS NOT NULL
                ORDER BY settled_at DESC LIMIT $2) newest) l";

/// Read the overview's [`Flow`].
pub async fn flow(conn: &mut PgConnection) -> Result<Flow, sqlx::Error> {
    sqlx::query_as(FLOW_SQL)
        .bind(COUNT_CAP)
        .bind(LAG_SAMPLE)
        .fetch_one(conn)
        .await
}

/// A reconciliation run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReconcileRun {
    /// Run id.
    pub id: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Its report (`idem reconcile --json`'s).
    pub report: serde_json::Value,
}

/// The newest recorded reconciliation, if any.
pub async fn last_reconcile_run(
    conn: &mut PgConnection,
) -> Result<Option<ReconcileRun>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, started_at, finished_at, report FROM reconcile_run ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await
}

/// How many runs [`record_reconcile_run`] keeps.
pub const KEPT_RUNS: i64 = 1000;

/// Record a finished run's `report`, and forget runs beyond the newest
/// [`KEPT_RUNS`] in the same statement (through the primary key: a run
/// deletes at most the one or two that fell out).
pub async fn record_reconcile_run(
    conn: &mut PgConnection,
    started_at: DateTime<Utc>,
    report: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH added AS (INSERT INTO reconcile_run (started_at, report) VALUES ($1, $2) RETURNING id),
              trimmed AS (DELETE FROM reconcile_run
                          WHERE id <= (SELECT id FROM added) - $3 RETURNING 1)
         SELECT id FROM added",
    )
    .bind(started_at)
    .bind(report)
    .bind(KEPT_RUNS)
    .fetch_one(conn)
    .await
}
