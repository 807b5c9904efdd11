//! # idem-retention
//!
//! Retention (`docs/contracts.md`, guarantee 5): a periodic job that deletes
//! inbox keys, settled outbox rows, quarantined messages and key-conflict records once
//! they have outlived their windows, so no table grows forever. What nobody
//! resolved is never deleted, whatever its age: an open outbox row
//! (`pending`, `in_flight`, `unknown`), a `dead` one waiting for an operator,
//! and the inbox keys of both.
//!
//! Every interval a pass runs each table in turn, deleting bounded batches
//! (each its own short transaction, `FOR UPDATE SKIP LOCKED`) with a pause
//! between them, until a batch comes back short: nothing old is left. The
//! SQL, and why each delete picks the rows it does, is in
//! `idem_store::retention`.
//!
//! **Replicas.** Every replica runs the job, whatever its role: the tables
//! must stay bounded as long as any replica is up. Each batch first takes a
//! transaction-scoped advisory lock with `pg_try_advisory_xact_lock`; a
//! replica that finds it taken ends its pass (another one is working), so
//! normally one replica deletes and the others only probe the lock. The lock
//! is an economy, not the safety: `SKIP LOCKED` alone keeps concurrent
//! batches on disjoint rows, and a lock held by a transaction dies with it.
//!
//! **Outages.** A failed pass (database away, statement cut, timeout) is
//! logged and counted, and the next interval tries again; the job never ends
//! the daemon. It stops at the shutdown token, between batches or during a
//! pause (a batch cut mid-way rolls back).
//!
//! ## Layout
//! - the crate root: the validated settings ([`RetentionConfig`],
//!   [`horizon`]), one batch ([`delete_batch`]), one pass over every table
//!   ([`run_once`]), and the periodic job ([`run`]). The SQL is
//!   `idem_store::retention`.
//! - `metrics`: the names and help texts of the metrics the job records.

pub mod metrics;

use std::time::Duration;

use anyhow::Context;
use idem_periodic::{Ended, Every, Job, in_batches};
use idem_store::retention as sql;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Validated retention settings. Tests may build one directly with short
/// windows: the floor applies to what an operator configures, not to the job.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Inbox keys: how long after `last_seen_at`.
    pub inbox: Duration,
    /// Settled (`succeeded`, `declined`) outbox rows: how long after
    /// `settled_at`.
    pub outbox: Duration,
    /// Quarantine and key-conflict records: how long after `received_at`.
    pub quarantine: Duration,
    /// Rows per delete statement.
    pub batch: i64,
    /// Time between passes.
    pub interval: Duration,
    /// Time between batches of one pass.
    pub pause: Duration,
}

/// Longest window accepted (ten years), which also keeps the arithmetic sane.
pub const MAX_HOURS: u64 = 87_600;

/// The shortest window an operator may configure, given the lease and the
/// longest retry delay: the largest of 1 hour, 10 × the lease, 10 × the
/// longest retry delay.
///
/// Why. Copies of a message keep arriving for a while after it was recorded:
/// the broker redelivers unacked deliveries after a consumer's connection
/// drops (seconds to minutes), a producer retries on its own schedule, and
/// while its charge is open our own machinery reclaims it after a lease and
/// retries after up to `IDEM_RETRY_MAX_MS`. A key deleted while a copy may
/// still come is a copy treated as new. The job already keeps keys of open
/// charges whatever their age, and measures from the last copy seen, so this
/// floor is the second line: a window that is not an order of magnitude above
/// the daemon's own timescales, or under an hour, is a unit mistake (seconds
/// meant as hours) or a window no producer's retries fit in, and is refused.
pub fn horizon(lease: Duration, retry_max: Duration) -> Duration {
    Duration::from_secs(3600)
        .max(lease.saturating_mul(10))
        .max(retry_max.saturating_mul(10))
}

/// A table retention trims (the `table` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Dedup keys.
    Inbox,
    /// Settled charges.
    Outbox,
    /// Bad input.
    Quarantine,
    /// Same key, other payload reports.
    KeyConflict,
}

impl Table {
    /// Every table, in the order a pass visits them.
    pub const ALL: [Table; 4] = [
        Table::Inbox,
        Table::Outbox,
        Table::Quarantine,
        Table::KeyConflict,
    ];

    /// The table's name (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Inbox => "inbox",
            Table::Outbox => "outbox",
            Table::Quarantine => "quarantine",
            Table::KeyConflict => "key_conflict",
        }
    }

    fn window(self, config: &RetentionConfig) -> Duration {
        match self {
            Table::Inbox => config.inbox,
            Table::Outbox => config.outbox,
            Table::Quarantine | Table::KeyConflict => config.quarantine,
        }
    }

    async fn delete(
        self,
        conn: &mut PgConnection,
        window: Duration,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        match self {
            Table::Inbox => sql::delete_inbox_keys(conn, window, limit).await,
            Table::Outbox => sql::delete_settled_outbox(conn, window, limit).await,
            Table::Quarantine => sql::delete_quarantine(conn, window, limit).await,
            Table::KeyConflict => sql::delete_key_conflicts(conn, window, limit).await,
        }
    }
}

/// What one pass did to one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Rows deleted.
    pub deleted: u64,
    /// Delete statements run (the last one came back short).
    pub batches: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Per table, in the order visited.
    pub sweeps: Vec<(Table, Sweep)>,
    /// Another replica held the retention lock, so this pass left the rest to it.
    pub yielded: bool,
    /// The shutdown token fired before the pass finished.
    pub interrupted: bool,
}

impl Pass {
    /// The sweep of `table` (zero if the pass did not reach it).
    pub fn of(&self, table: Table) -> Sweep {
        self.sweeps
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }

    /// Rows deleted from every table.
    pub fn deleted(&self) -> u64 {
        self.sweeps.iter().map(|(_, s)| s.deleted).sum()
    }
}

/// Longest one batch may take before the pass is abandoned (a stuck
/// connection, a lock queue): the next interval starts afresh.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Delete one batch of `table` in its own transaction, under the retention
/// lock. `Ok(None)`: another replica holds the lock (nothing was done).
pub async fn delete_batch(
    pool: &PgPool,
    config: &RetentionConfig,
    table: Table,
) -> anyhow::Result<Option<u64>> {
    let batch = async {
        let mut tx = pool.begin().await?;
        if !sql::try_lock(&mut tx).await? {
            return Ok::<_, sqlx::Error>(None);
        }
        let deleted = table
            .delete(&mut tx, table.window(config), config.batch)
            .await?;
        tx.commit().await?;
        Ok(Some(deleted))
    };
    let deleted = tokio::time::timeout(BATCH_TIMEOUT, batch)
        .await
        .with_context(|| {
            format!(
                "retention batch on {} timed out after {BATCH_TIMEOUT:?}",
                table.as_str()
            )
        })?
        .with_context(|| format!("retention batch on {}", table.as_str()))?;
    if let Some(n) = deleted {
        ::metrics::counter!(metrics::DELETED, "table" => table.as_str()).increment(n);
    }
    Ok(deleted)
}

/// One pass: every table, batch after batch, until a batch comes back short,
/// another replica holds the lock, or `shutdown` fires. An error ends the
/// pass (what was deleted before it stays deleted).
pub async fn run_once(
    pool: &PgPool,
    config: &RetentionConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    for table in Table::ALL {
        let done = in_batches(config.batch.unsigned_abs(), config.pause, shutdown, || {
            delete_batch(pool, config, table)
        })
        .await?;
        let sweep = Sweep {
            deleted: done.rows,
            batches: done.batches,
        };
        pass.sweeps.push((table, sweep));
        match done.ended {
            Ended::Exhausted => {}
            Ended::Yielded => {
                pass.yielded = true;
                return Ok(pass);
            }
            Ended::Interrupted => {
                pass.interrupted = true;
                return Ok(pass);
            }
        }
    }
    Ok(pass)
}

/// Run a pass about every `config.interval` (jittered) until `shutdown`; the
/// first one an interval after start, so a fleet restarting at once does not
/// sweep at once, and start-up does nothing but serve. Never fails: a failed
/// pass is logged, counted, and retried next interval.
pub async fn run(
    pool: PgPool,
    config: RetentionConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = Every::new(config.interval);
    idem_periodic::run(Retention { pool, config }, every, shutdown).await;
    Ok(())
}

/// The retention job as the periodic runner sees it.
struct Retention {
    pool: PgPool,
    config: RetentionConfig,
}

impl Job for Retention {
    type Report = Pass;

    fn name(&self) -> &'static str {
        "retention pass"
    }

    async fn run_once(&mut self, shutdown: &CancellationToken) -> anyhow::Result<Pass> {
        run_once(&self.pool, &self.config, shutdown).await
    }

    fn done(&mut self, pass: Pass, elapsed: Duration) {
        report(&pass, elapsed);
    }

    fn failed(&mut self, error: &anyhow::Error, retry_in: Duration) {
        ::metrics::counter!(metrics::PASSES, "outcome" => "failed").increment(1);
        tracing::warn!(
            error = format!("{error:#}"),
            ?retry_in,
            "retention pass failed; what it deleted stays deleted, the next pass continues"
        );
    }
}

fn report(pass: &Pass, elapsed: Duration) {
    if pass.interrupted {
        return;
    }
    let outcome = if pass.yielded { "yielded" } else { "completed" };
    ::metrics::counter!(metrics::PASSES, "outcome" => outcome).increment(1);
    if !pass.yielded {
        ::metrics::gauge!(metrics::COMPLETED_TIMESTAMP_SECONDS)
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    let count = |t| pass.of(t).deleted;
    if pass.deleted() > 0 {
        tracing::info!(
            inbox = count(Table::Inbox),
            outbox = count(Table::Outbox),
            quarantine = count(Table::Quarantine),
            key_conflict = count(Table::KeyConflict),
            yielded = pass.yielded,
            ?elapsed,
            "retention pass deleted old rows"
        );
    } else {
        tracing::debug!(
            yielded = pass.yielded,
            ?elapsed,
            "retention pass: nothing old"
        );
    }
}
