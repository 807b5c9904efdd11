//! # idem-reconcile
//!
//! Idempotency keys close most of the gap between "sent" and "charged once";
//! the reconciler closes the rest by holding the provider's books against
//! ours. It lists the provider's charges in a time window and, per reference:
//! refunds every extra succeeded charge (recorded first in `compensation`,
//! refunded under a key derived from the charge, so a retried or concurrent
//! refund is never doubled); settles `pending`/`unknown`/`dead` rows whose
//! charge it finds; re-queues `unknown` rows without a charge once they have
//! been quiet for longer than the grace period; and reports, without touching
//! them, charges we never asked for and succeeded rows the provider lacks.
//!
//! ## Layout
//! - `reconciler`: one run ([`Reconciler::run_once`]), under an advisory lock:
//!   read, apply each reference's verdict, refund.
//! - `verdict`: what to do about one reference, a pure function of our row
//!   and the provider's charges ([`judge`]).
//! - `metrics`: the names and help texts of the metrics a run records.
//! - `report`: counts and findings, as a table or JSON.
//! - [`run_periodic`]: the job inside `idem run` (an `idem_periodic::Job`,
//!   dropped mid-run at shutdown: safe, see `Reconciling`).

pub mod metrics;
mod reconciler;
pub mod report;
mod verdict;

use std::time::Duration;

use idem_periodic::{Every, Job};
use tokio_util::sync::CancellationToken;

pub use reconciler::{ReconcileConfig, Reconciler, Window, refund_key};
pub use report::{Finding, FindingKind, Report};
pub use verdict::{Keep, KeepRule, Verdict, judge};

/// Reconcile every `interval` (± a tenth, so replicas drift apart) over the
/// last `lookback` until `shutdown`. Only one replica runs at a time (the
/// others skip their turn); a failed run (provider or database away) is logged
/// and tried again next interval.
pub async fn run_periodic(
    reconciler: Reconciler,
    interval: Duration,
    lookback: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let lookback = chrono::Duration::from_std(lookback)?;
    let job = Reconciling {
        reconciler,
        lookback,
    };
    idem_periodic::run(job, Every::new(interval), shutdown).await;
    Ok(())
}

/// The reconciler as a periodic job: each run over the last `lookback`.
struct Reconciling {
    /// Does the work.
    reconciler: Reconciler,
    /// How far back each run looks.
    lookback: chrono::Duration,
}

impl Job for Reconciling {
    /// `None`: another replica held the lock, this turn was skipped.
    type Report = Option<Report>;

    // Shutdown does not wait for a long run (a day's listing): the run is
    // dropped between two writes. Safe: each write is one guarded statement,
    // a compensation is recorded before its refund is sent, and the next run
    // (here or on another replica) picks up where this one stopped, refunds
    // under the same keys. The advisory lock goes with the process's
    // connections.
    const DROP_ON_SHUTDOWN: bool = true;

    fn name(&self) -> &'static str {
        "reconciliation"
    }

    async fn run_once(&mut self, _shutdown: &CancellationToken) -> anyhow::Result<Option<Report>> {
        let window = Window {
            from: chrono::Utc::now() - self.lookback,
            to: None,
        };
        self.reconciler.try_run_once(window).await
    }

    fn done(&mut self, report: Option<Report>, _elapsed: Duration) {
        match report {
            Some(report) => log_report(&report),
            None => tracing::debug!("another replica is reconciling; skipping this turn"),
        }
    }
}

fn log_report(report: &Report) {
    tracing::info!(
        charges = report.charges_listed,
        extra = report.extra_charges,
        refunded = report.refunds_confirmed,
        settled = report.rows_settled,
        requeued = report.rows_requeued,
        findings = report.findings_total(),
        "reconciliation run done"
    );
    for f in &report.findings {
        tracing::warn!(kind = f.kind.as_str(), reference_id = %f.reference_id, outbox_id = ?f.outbox_id, charges = ?f.charge_ids, "reconciliation finding: {}", f.detail);
    }
}
