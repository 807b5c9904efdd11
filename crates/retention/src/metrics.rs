//! The metrics the retention job records: their names, help texts, and the
//! counters registered at zero. Recorded through the `metrics` facade (no-ops
//! unless the process installed a recorder); the daemon installs one and
//! calls [`describe`].

use ::metrics::{counter, describe_counter, describe_gauge};

use crate::Table;

/// Counter, label `table` ([`Table::as_str`]): rows deleted past their
/// window.
pub const DELETED: &str = "idem_retention_deleted_total";
/// Counter, label `outcome` ([`PASS_OUTCOMES`]): retention passes.
pub const PASSES: &str = "idem_retention_passes_total";
/// Gauge, Unix seconds: this replica's last pass that completed with nothing
/// old left.
pub const COMPLETED_TIMESTAMP_SECONDS: &str = "idem_retention_completed_timestamp_seconds";

/// Every metric of this crate.
pub const ALL: &[&str] = &[DELETED, PASSES, COMPLETED_TIMESTAMP_SECONDS];

/// Every value of the `outcome` label of [`PASSES`]. An interrupted pass
/// (shutdown) is not counted.
pub const PASS_OUTCOMES: [&str; 3] = ["completed", "yielded", "failed"];

/// Help texts, and the counters registered at zero so that every series
/// exists (and `rate()` works) before the first pass.
pub fn describe() {
    describe_counter!(
        DELETED,
        "Rows deleted by retention past their window, by table (inbox|outbox|quarantine|key_conflict)"
    );
    describe_counter!(
        PASSES,
        "Retention passes by outcome (completed: nothing old left; yielded: another replica held the lock; failed)"
    );
    describe_gauge!(
        COMPLETED_TIMESTAMP_SECONDS,
        "Unix time this replica last completed a retention pass with nothing old left"
    );

    for table in Table::ALL {
        counter!(DELETED, "table" => table.as_str()).increment(0);
    }
    for outcome in PASS_OUTCOMES {
        counter!(PASSES, "outcome" => outcome).increment(0);
    }
}
