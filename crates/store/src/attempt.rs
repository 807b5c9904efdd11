//! Attempt history: every provider call made for an outbox row (written with
//! the attempt's result by [`crate::settle::settle_many`], or alone by
//! [`record`]), read back by the admin commands.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// One provider call to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    /// The outbox row the call was made for.
    pub outbox_id: i64,
    /// `charge`, `lookup` or `refund`.
    pub kind: &'static str,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// Milliseconds until the answer or the failure.
    pub latency_ms: f64,
    /// HTTP status, when one arrived.
    pub http_status: Option<i16>,
    /// Transport error or failure reason; `None` on success.
    pub error: Option<String>,
    /// The provider's id of the charge or refund.
    pub provider_id: Option<String>,
}

impl NewAttempt {
    /// The history row of `call`, made for outbox row `outbox_id`.
    pub fn of_call(outbox_id: i64, call: &idem_charge_api::Call) -> Self {
        Self {
            outbox_id,
            kind: call.kind.as_str(),
            started_at: call.started_at,
            latency_ms: call.latency.as_secs_f64() * 1000.0,
            http_status: call.http_status.and_then(|s| i16::try_from(s).ok()),
            error: call.error.clone(),
            provider_id: call.provider_id.clone(),
        }
    }
}

/// One recorded call, as the admin commands show it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    /// Row id (call order).
    pub id: i64,
    /// The outbox row.
    pub outbox_id: i64,
    /// `charge`, `lookup` or `refund`.
    pub kind: String,
    /// The replica that made the call.
    pub replica: String,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// Milliseconds until the answer or the failure.
    pub latency_ms: f64,
    /// HTTP status, when one arrived.
    pub http_status: Option<i16>,
    /// Transport error or failure reason.
    pub error: Option<String>,
    /// The provider's id of the charge or refund.
    pub provider_id: Option<String>,
}

/// The batch as one array per column, for `unnest`.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub(crate) outbox_id: Vec<i64>,
    pub(crate) kind: Vec<&'static str>,
    pub(crate) started_at: Vec<DateTime<Utc>>,
    pub(crate) latency_ms: Vec<f64>,
    pub(crate) http_status: Vec<Option<i16>>,
    pub(crate) error: Vec<Option<String>>,
    pub(crate) provider_id: Vec<Option<String>>,
}

impl Columns {
    pub(crate) fn of(attempts: &[NewAttempt]) -> Self {
        let mut cols = Self::default();
        for a in attempts {
            cols.outbox_id.push(a.outbox_id);
            cols.kind.push(a.kind);
            cols.started_at.push(a.started_at);
            cols.latency_ms.push(a.latency_ms.max(0.0));
            cols.http_status.push(a.http_status);
            cols.error
                .push(a.error.as_deref().map(crate::quarantine::sanitize));
            cols.provider_id
                .push(a.provider_id.as_deref().map(crate::quarantine::sanitize));
        }
        cols
    }
}

/// The `INSERT` of a batch: `$1` replica, `$2..$8` the columns of [`Columns`].
/// Embedded as a CTE by `settle_many` with its parameters shifted.
pub(crate) fn insert_sql(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "INSERT INTO attempt (outbox_id, kind, replica, started_at, latency_ms, http_status, error, provider_id)
         SELECT a.outbox_id, a.kind, {replica}, a.started_at, a.latency_ms, a.http_status, a.error, a.provider_id
         FROM unnest({ids}::bigint[], {kinds}::text[], {starts}::timestamptz[], {lat}::float8[],
                     {status}::int2[], {errors}::text[], {provider}::text[])
             AS a(outbox_id, kind, started_at, latency_ms, http_status, error, provider_id)
         WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.id = a.outbox_id)",
        replica = p(0),
        ids = p(1),
        kinds = p(2),
        starts = p(3),
        lat = p(4),
        status = p(5),
        errors = p(6),
        provider = p(7),
    )
}

/// Record calls made outside the dispatcher (the reconciler's refunds);
/// calls whose outbox row is gone are skipped. Returns how many were written.
pub async fn record(
    conn: &mut PgConnection,
    replica: &str,
    attempts: &[NewAttempt],
) -> Result<u64, sqlx::Error> {
    if attempts.is_empty() {
        return Ok(0);
    }
    let cols = Columns::of(attempts);
    let done = sqlx::query(&insert_sql(1))
        .bind(replica)
        .bind(cols.outbox_id)
        .bind(cols.kind)
        .bind(cols.started_at)
        .bind(cols.latency_ms)
        .bind(cols.http_status)
        .bind(cols.error)
        .bind(cols.provider_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// The outbox row id of `reference_id`, if the row exists.
pub async fn outbox_id_of(
    conn: &mut PgConnection,
    reference_id: Uuid,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM outbox WHERE reference_id = $1")
        .bind(reference_id)
        .fetch_optional(conn)
        .await
}

/// Every recorded call for outbox row `outbox_id`, oldest first.
pub async fn of_outbox(
    conn: &mut PgConnection,
    outbox_id: i64,
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, outbox_id, kind, replica, started_at, latency_ms, http_status, error, provider_id
         FROM attempt WHERE outbox_id = $1 ORDER BY id",
    )
    .bind(outbox_id)
    .fetch_all(conn)
    .await
}
