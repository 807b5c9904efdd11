//! Counts for `idem status` and the demo's report.

use std::collections::BTreeMap;

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

/// Read the counts (a few aggregate queries; meant for humans, not hot paths).
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
