//! The reconciler's settings of `idem run` (`IDEM_RECONCILE_*`), also taken
//! by the one-shot `idem reconcile`.

use std::time::Duration;

use anyhow::ensure;
use clap::Args;
use idem_reconcile::ReconcileConfig;

use super::replica::default_replica_id;

/// The periodic reconciler inside `idem run`.
#[derive(Args, Debug, Clone)]
pub struct ReconcileArgs {
    /// Seconds between reconciliation runs in `idem run` (one replica at a
    /// time runs each); 0 turns the periodic job off.
    #[arg(long, env = "IDEM_RECONCILE_INTERVAL_SECS", default_value_t = 300)]
    pub reconcile_interval_secs: u64,
    /// How far back each periodic run lists the provider's charges, in hours.
    #[arg(long, env = "IDEM_RECONCILE_LOOKBACK_HOURS", default_value_t = 24)]
    pub reconcile_lookback_hours: u64,
    /// Seconds an `unknown` row must have been left alone before a listing
    /// without its charge re-queues it; more than twice the charge timeout.
    #[arg(long, env = "IDEM_RECONCILE_GRACE_SECS", default_value_t = 60)]
    pub reconcile_grace_secs: u64,
    /// Charges per page of the provider's listing.
    #[arg(long, env = "IDEM_RECONCILE_PAGE_SIZE", default_value_t = 100)]
    pub reconcile_page_size: u32,
}

/// Validated reconciler settings.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// The reconciler's own settings.
    pub reconciler: ReconcileConfig,
    /// Period of the job in `idem run`; `None`: off.
    pub interval: Option<Duration>,
    /// Window of each periodic run.
    pub lookback: Duration,
}

impl ReconcileArgs {
    /// Check the settings against the charge timeout.
    pub fn validate(&self, charge_timeout: Duration) -> anyhow::Result<ReconcileSettings> {
        ensure!(
            Duration::from_secs(self.reconcile_grace_secs) > charge_timeout * 2,
            "IDEM_RECONCILE_GRACE_SECS={} must exceed twice IDEM_CHARGE_TIMEOUT_MS ({charge_timeout:?}): \
             a shorter grace could re-queue a row whose last request the provider is still processing",
            self.reconcile_grace_secs
        );
        ensure!(
            self.reconcile_grace_secs <= 7 * 86_400,
            "IDEM_RECONCILE_GRACE_SECS={} is over a week; pick at most 604800 (an unknown row \
             left that long belongs to an operator, not to a timer)",
            self.reconcile_grace_secs
        );
        ensure!(
            (1..=24 * 366).contains(&self.reconcile_lookback_hours),
            "IDEM_RECONCILE_LOOKBACK_HOURS={} must be between 1 and 8784 (a year)",
            self.reconcile_lookback_hours
        );
        ensure!(
            self.reconcile_interval_secs <= 86_400,
            "IDEM_RECONCILE_INTERVAL_SECS={} is over a day; pick at most 86400 (or 0 for off)",
            self.reconcile_interval_secs
        );
        ensure!(
            (1..=1000).contains(&self.reconcile_page_size),
            "IDEM_RECONCILE_PAGE_SIZE must be between 1 and 1000"
        );
        Ok(ReconcileSettings {
            reconciler: ReconcileConfig {
                grace: Duration::from_secs(self.reconcile_grace_secs),
                page_size: self.reconcile_page_size,
                replica: format!("reconciler@{}", default_replica_id()),
            },
            interval: (self.reconcile_interval_secs > 0)
                .then(|| Duration::from_secs(self.reconcile_interval_secs)),
            lookback: Duration::from_secs(self.reconcile_lookback_hours * 3600),
        })
    }
}
