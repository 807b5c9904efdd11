//! The metrics a reconciliation run records: their names, help texts, and
//! the counters registered at zero. Recorded through the `metrics` facade
//! (no-ops unless the process installed a recorder); the daemon installs one
//! and calls [`describe`].

use ::metrics::{counter, describe_counter, describe_gauge};

use crate::report::FindingKind;

/// Counter: reconciliation runs completed by this process.
pub const RUNS: &str = "idem_reconcile_runs_total";
/// Counter: extra charges found at the provider (more than one succeeded
/// charge for a reference).
pub const EXTRA_CHARGES: &str = "idem_reconcile_extra_charges_total";
/// Counter: refunds of extra charges the provider confirmed.
pub const REFUNDS: &str = "idem_reconcile_refunds_total";
/// Counter: rows settled as succeeded because reconciliation found their
/// charge.
pub const ROWS_SETTLED: &str = "idem_reconcile_rows_settled_total";
/// Counter: `unknown` rows re-queued because the provider had no charge for
/// them after the grace period.
pub const ROWS_REQUEUED: &str = "idem_reconcile_rows_requeued_total";
/// Counter, label `kind` ([`FindingKind::as_str`]): mismatches reported for
/// an operator.
pub const FINDINGS: &str = "idem_reconcile_findings_total";
/// Gauge, Unix seconds: this process's last completed run.
pub const LAST_RUN_TIMESTAMP_SECONDS: &str = "idem_reconcile_last_run_timestamp_seconds";

/// Every metric of this crate.
pub const ALL: &[&str] = &[
    RUNS,
    EXTRA_CHARGES,
    REFUNDS,
    ROWS_SETTLED,
    ROWS_REQUEUED,
    FINDINGS,
    LAST_RUN_TIMESTAMP_SECONDS,
];

/// Every kind of finding, for the `kind` label of [`FINDINGS`].
const FINDING_KINDS: [FindingKind; 4] = [
    FindingKind::ForeignCharge,
    FindingKind::MissingAtProvider,
    FindingKind::ChargedButDeclined,
    FindingKind::ChargeMismatch,
];

/// Help texts, and the counters registered at zero so that every series
/// exists (and `rate()` works) before the first run.
pub fn describe() {
    describe_counter!(RUNS, "Reconciliation runs completed by this process");
    describe_counter!(
        EXTRA_CHARGES,
        "Extra charges found at the provider (more than one succeeded charge for a reference)"
    );
    describe_counter!(REFUNDS, "Refunds of extra charges the provider confirmed");
    describe_counter!(
        ROWS_SETTLED,
        "Rows settled as succeeded because reconciliation found their charge"
    );
    describe_counter!(
        ROWS_REQUEUED,
        "unknown rows re-queued because the provider had no charge for them after the grace period"
    );
    describe_counter!(
        FINDINGS,
        "Mismatches reported for an operator, by kind (foreign_charge|missing_at_provider|charged_but_declined|charge_mismatch)"
    );
    describe_gauge!(
        LAST_RUN_TIMESTAMP_SECONDS,
        "Unix time of this process's last completed reconciliation run"
    );

    for name in [RUNS, EXTRA_CHARGES, REFUNDS, ROWS_SETTLED, ROWS_REQUEUED] {
        counter!(name).increment(0);
    }
    for kind in FINDING_KINDS {
        counter!(FINDINGS, "kind" => kind.as_str()).increment(0);
    }
}
