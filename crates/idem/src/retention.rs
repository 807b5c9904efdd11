//! Retention (DESIGN.md guarantee 5): a periodic job that deletes inbox keys,
//! settled outbox rows, quarantined messages and key-conflict records once
//! they have outlived their windows, so no table grows forever.
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

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use idem_store::retention as sql;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// The retention settings of `idem run`.
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Hours an inbox key is kept after the last copy of its message was seen
    /// (never while its charge is open). Longer than any producer's retry window.
    #[arg(long, env = "IDEM_INBOX_RETENTION_HOURS", default_value_t = 168)]
    pub inbox_retention_hours: u64,
    /// Hours a settled outbox row (succeeded, declined, dead) is kept after settling.
    #[arg(long, env = "IDEM_OUTBOX_RETENTION_HOURS", default_value_t = 720)]
    pub outbox_retention_hours: u64,
    /// Hours quarantined messages and key-conflict records are kept.
    #[arg(long, env = "IDEM_QUARANTINE_RETENTION_HOURS", default_value_t = 720)]
    pub quarantine_retention_hours: u64,
    /// Most rows one delete removes (one short transaction).
    #[arg(long, env = "IDEM_RETENTION_BATCH", default_value_t = 1000)]
    pub retention_batch: i64,
    /// Seconds between retention passes.
    #[arg(long, env = "IDEM_RETENTION_INTERVAL_SECS", default_value_t = 300)]
    pub retention_interval_secs: u64,
    /// Milliseconds between two batches of one pass (leaves the database room).
    #[arg(long, env = "IDEM_RETENTION_PAUSE_MS", default_value_t = 100)]
    pub retention_pause_ms: u64,
}

/// Validated retention settings. Tests may build one directly with short
/// windows: the floor applies to what an operator configures, not to the job.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Inbox keys: how long after `last_seen_at`.
    pub inbox: Duration,
    /// Settled outbox rows: how long after `settled_at`.
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
const MAX_HOURS: u64 = 87_600;

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

impl RetentionArgs {
    /// Check the settings against the daemon's lease and longest retry delay;
    /// errors name the variable and the smallest accepted value.
    pub fn validate(
        &self,
        lease: Duration,
        retry_max: Duration,
    ) -> anyhow::Result<RetentionConfig> {
        let floor = horizon(lease, retry_max);
        let floor_hours = floor.as_secs().div_ceil(3600);
        for (var, hours) in [
            ("IDEM_INBOX_RETENTION_HOURS", self.inbox_retention_hours),
            ("IDEM_OUTBOX_RETENTION_HOURS", self.outbox_retention_hours),
            (
                "IDEM_QUARANTINE_RETENTION_HOURS",
                self.quarantine_retention_hours,
            ),
        ] {
            ensure!(
                hours <= MAX_HOURS,
                "{var}={hours} is over ten years; pick at most {MAX_HOURS}"
            );
            ensure!(
                hours >= floor_hours,
                "{var}={hours} is shorter than the redelivery/lease horizon: pick at least {floor_hours} \
                 (the largest of 1 hour, 10 x IDEM_LEASE_SECS and 10 x IDEM_RETRY_MAX_MS); rows deleted \
                 while copies of their message may still arrive would let a copy pass as new"
            );
        }
        ensure!(
            (1..=100_000).contains(&self.retention_batch),
            "IDEM_RETENTION_BATCH={} must be 1..=100000: one batch is one transaction holding row locks",
            self.retention_batch
        );
        ensure!(
            (1..=86_400).contains(&self.retention_interval_secs),
            "IDEM_RETENTION_INTERVAL_SECS={} must be 1..=86400",
            self.retention_interval_secs
        );
        ensure!(
            self.retention_pause_ms <= 60_000,
            "IDEM_RETENTION_PAUSE_MS={} is over a minute",
            self.retention_pause_ms
        );
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Ok(RetentionConfig {
            inbox: hours(self.inbox_retention_hours),
            outbox: hours(self.outbox_retention_hours),
            quarantine: hours(self.quarantine_retention_hours),
            batch: self.retention_batch,
            interval: Duration::from_secs(self.retention_interval_secs),
            pause: Duration::from_millis(self.retention_pause_ms),
        })
    }
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
        ::metrics::counter!("idem_retention_deleted_total", "table" => table.as_str()).increment(n);
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
        let mut sweep = Sweep::default();
        loop {
            if shutdown.is_cancelled() {
                pass.interrupted = true;
                pass.sweeps.push((table, sweep));
                return Ok(pass);
            }
            let Some(deleted) = delete_batch(pool, config, table).await? else {
                pass.yielded = true;
                pass.sweeps.push((table, sweep));
                return Ok(pass);
            };
            sweep.batches += 1;
            sweep.deleted += deleted;
            if deleted < config.batch.unsigned_abs() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(config.pause) => {}
            }
        }
        pass.sweeps.push((table, sweep));
    }
    Ok(pass)
}

/// Run a pass every `config.interval` until `shutdown`; the first one an
/// interval after start, so a fleet restarting at once does not sweep at once,
/// and start-up does nothing but serve. Never fails: a failed pass is logged,
/// counted, and retried next interval.
pub async fn run(
    pool: PgPool,
    config: RetentionConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(config.interval) => {}
        }
        let started = Instant::now();
        match run_once(&pool, &config, &shutdown).await {
            Ok(pass) => report(&pass, started.elapsed()),
            Err(e) => {
                ::metrics::counter!("idem_retention_passes_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(error = format!("{e:#}"), retry_in = ?config.interval,
                    "retention pass failed; what it deleted stays deleted, the next pass continues");
            }
        }
    }
}

fn report(pass: &Pass, elapsed: Duration) {
    if pass.interrupted {
        return;
    }
    let outcome = if pass.yielded { "yielded" } else { "completed" };
    ::metrics::counter!("idem_retention_passes_total", "outcome" => outcome).increment(1);
    if !pass.yielded {
        ::metrics::gauge!("idem_retention_completed_timestamp_seconds")
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
