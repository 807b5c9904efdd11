//! The retention settings of `idem run` (`IDEM_*_RETENTION_HOURS`, batch,
//! interval, pause), validated into an [`idem_retention::RetentionConfig`].

use std::time::Duration;

use anyhow::ensure;
use clap::Args;
use idem_retention::{MAX_HOURS, RetentionConfig, horizon};

/// The retention settings of `idem run`.
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Hours an inbox key is kept after the last copy of its message was seen
    /// (never while its charge is open). Longer than any producer's retry window.
    #[arg(long, env = "IDEM_INBOX_RETENTION_HOURS", default_value_t = 168)]
    pub inbox_retention_hours: u64,
    /// Hours a settled outbox row (succeeded, declined) is kept after settling;
    /// dead rows are kept until an operator retries or resolves them.
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
