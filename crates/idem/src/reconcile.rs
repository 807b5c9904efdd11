//! Reconciliation settings (part of `idem run`'s flags) and `idem reconcile`,
//! the one-shot run over a window that prints its report.

use std::time::Duration;

use anyhow::{bail, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use idem_reconcile::{ReconcileConfig, Reconciler, Window};

use crate::config::RunArgs;

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
                replica: format!("reconciler@{}", crate::config::default_replica_id()),
            },
            interval: (self.reconcile_interval_secs > 0)
                .then(|| Duration::from_secs(self.reconcile_interval_secs)),
            lookback: Duration::from_secs(self.reconcile_lookback_hours * 3600),
        })
    }
}

/// `idem reconcile`: one run over a window, then a report.
#[derive(Args, Debug)]
pub struct ReconcileCommand {
    /// Database, provider and reconciler settings: the same flags and
    /// variables as `idem run`.
    #[command(flatten)]
    pub run: Box<RunArgs>,
    /// Window: charges created in the last this many hours, up to now (an
    /// open window: missing charges and unknown rows are judged too).
    #[arg(long, default_value_t = 24, conflicts_with = "from")]
    pub since_hours: u64,
    /// Window start instead (RFC 3339, e.g. 2026-11-22T00:00:00Z).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Window end (RFC 3339); absent: now (open). A closed window only
    /// compares the charges it lists.
    #[arg(long, requires = "from")]
    pub to: Option<DateTime<Utc>>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `idem reconcile`.
pub async fn execute(cmd: ReconcileCommand) -> anyhow::Result<()> {
    let config = cmd.run.validate()?;
    let window = match cmd.from {
        Some(from) => {
            if let Some(to) = cmd.to
                && to <= from
            {
                bail!("--to must be after --from");
            }
            Window { from, to: cmd.to }
        }
        None => Window {
            from: Utc::now() - chrono::Duration::hours(i64::try_from(cmd.since_hours)?),
            to: None,
        },
    };
    let pool = idem_store::connect(&config.database_url, 4).await?;
    idem_store::migrate(&pool).await?;
    let client = config.charge_client()?;
    let reconciler = Reconciler::new(pool, client, config.reconcile.reconciler.clone());
    let report = reconciler.run_once(window).await?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
