//! The metrics the dispatcher, its recorder and the lease rescuer record:
//! their names, help texts, and the counters registered at zero. Recorded
//! through the `metrics` facade (no-ops unless the process installed a
//! recorder); the daemon installs one and calls [`describe`].

use ::metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

/// Counter: outbox rows claimed with a lease.
pub const CLAIMED_ROWS: &str = "idem_dispatch_claimed_rows_total";
/// Histogram, seconds: one successful claim statement, including acquiring a
/// connection.
pub const CLAIM_SECONDS: &str = "idem_dispatch_claim_seconds";
/// Histogram, seconds, label `class` ([`RESPONSE_CLASSES`]): one attempt for
/// one row, lookup and/or charge call through the fenced settle.
pub const ATTEMPT_SECONDS: &str = "idem_dispatch_attempt_seconds";
/// Counter, label `class` ([`RESPONSE_CLASSES`]): attempts by what the
/// provider's answer meant.
pub const PROVIDER_RESPONSES: &str = "idem_provider_responses_total";
/// Histogram, rows (buckets of their own, set by the daemon): results written
/// per statement by the recorder's group commit.
pub const SETTLE_BATCH_ROWS: &str = "idem_dispatch_settle_batch_rows";
/// Counter: results refused by the lease fence (the lease expired during the
/// call).
pub const FENCE_REFUSALS: &str = "idem_dispatch_fence_refusals_total";
/// Counter: attempts whose result could not be written (database error while
/// settling); the rescuer resolves the row.
pub const ABANDONED: &str = "idem_dispatch_abandoned_total";
/// Counter: attempts cut off at 90% of the lease, recorded as uncertain
/// through the fence.
pub const OVERRAN: &str = "idem_dispatch_overran_total";
/// Counter: in-flight rows returned to play by this replica's rescuer, by
/// `cause`: `expired` (the lease ran out) or `holder_gone` (the holder's
/// liveness lock was released: its session ended).
pub const LEASE_RECLAIMS: &str = "idem_lease_reclaims_total";
/// Gauge: 1 while this replica holds its liveness lock (claims carry its
/// key, so its rows are rescued at once if it dies), else 0.
pub const LIVENESS_HELD: &str = "idem_dispatch_liveness_held";
/// Gauge: provider calls in flight in this replica (at most the configured
/// concurrency).
pub const IN_FLIGHT: &str = "idem_dispatch_in_flight";

/// Gauge: 1 while this replica's provider breaker is open or half-open
/// (claiming paused), 0 while closed.
pub const BREAKER_OPEN: &str = "idem_dispatch_breaker_open";
/// Counter: times this replica's provider breaker opened.
pub const BREAKER_OPENED: &str = "idem_dispatch_breaker_opened_total";
/// Counter, label `status` (`401`, `403`, `404`, `429`, `unreachable`):
/// provider calls refused because of us, not the charge; none counts toward
/// a row's attempts.
pub const REFUSALS: &str = "idem_provider_refusals_total";
/// Counter: failed lookups after an uncertain attempt that fell back to the
/// retry under the same (honoured, unexpired) key.
pub const LOOKUP_FALLBACKS: &str = "idem_dispatch_lookup_fallbacks_total";
/// Counter, label `reason` ([`UNRESOLVED_REASONS`]): attempts that left an
/// uncertain row `unknown` without charging, waiting for a lookup,
/// reconciliation or an operator.
pub const UNRESOLVED: &str = "idem_dispatch_unresolved_total";

/// Every value of the `reason` label of [`UNRESOLVED`]: the lookup failed
/// and no key may be trusted (`lookup_failed`); the provider's key lifetime
/// has passed and there is no lookup (`key_expired`).
pub const UNRESOLVED_REASONS: [&str; 2] = ["lookup_failed", "key_expired"];

/// Counter: writes of a group of results that failed and were made again
/// (the database away or refusing), within the lease.
pub const SETTLE_RETRIES: &str = "idem_dispatch_settle_retries_total";

/// Every metric of this crate.
pub const ALL: &[&str] = &[
    CLAIMED_ROWS,
    CLAIM_SECONDS,
    ATTEMPT_SECONDS,
    PROVIDER_RESPONSES,
    SETTLE_BATCH_ROWS,
    FENCE_REFUSALS,
    ABANDONED,
    OVERRAN,
    LEASE_RECLAIMS,
    LIVENESS_HELD,
    IN_FLIGHT,
    BREAKER_OPEN,
    BREAKER_OPENED,
    REFUSALS,
    LOOKUP_FALLBACKS,
    UNRESOLVED,
    SETTLE_RETRIES,
];

/// Every value of the `class` label, as the dispatcher's `response_class`
/// reads it from a settlement.
pub const RESPONSE_CLASSES: [&str; 6] = [
    "succeeded",
    "declined",
    "not_processed",
    "uncertain",
    "rejected",
    "refused",
];

/// Help texts, and the counters registered at zero so that every series
/// exists (and `rate()` works) before its first event.
pub fn describe() {
    describe_counter!(
        CLAIMED_ROWS,
        "Outbox rows claimed with a lease by the dispatcher"
    );
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "Time of one claim statement (successful ones), including acquiring a connection"
    );
    describe_histogram!(
        ATTEMPT_SECONDS,
        Unit::Seconds,
        "One attempt for one row: lookup and/or charge call through the fenced settle, by response class"
    );
    describe_counter!(
        PROVIDER_RESPONSES,
        "Attempts by what the provider's answer meant (succeeded|declined|not_processed|uncertain|rejected|refused)"
    );
    describe_histogram!(
        SETTLE_BATCH_ROWS,
        "Results written per statement by the dispatcher's recorder (group commit)"
    );
    describe_counter!(
        SETTLE_RETRIES,
        "Writes of a group of attempt results that failed and were made again within the lease (the database away or refusing writes)"
    );
    describe_counter!(
        FENCE_REFUSALS,
        "Results refused by the lease fence (the lease expired during the call)"
    );
    describe_counter!(
        ABANDONED,
        "Attempts whose result could not be written within the lease (the database away or refusing writes the whole time); the rescuer resolves the row"
    );
    describe_counter!(
        OVERRAN,
        "Attempts cut off at 90% of the lease (provider or process too slow), recorded as uncertain through the fence"
    );
    describe_counter!(
        LEASE_RECLAIMS,
        "In-flight rows returned to play by this replica's rescuer, by cause (expired lease, or holder gone)"
    );
    describe_gauge!(
        LIVENESS_HELD,
        "1 while this replica holds its liveness lock (its rows are rescued at once if it dies)"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Provider calls in flight in this replica (at most IDEM_DISPATCH_CONCURRENCY)"
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while this replica's provider breaker is open or half-open (claiming paused), else 0"
    );
    describe_counter!(
        BREAKER_OPENED,
        "Times this replica's provider breaker opened (refused key or endpoint, sustained 429 or refused connections)"
    );
    describe_counter!(
        REFUSALS,
        "Provider calls refused because of us (status 401|403|404|429|unreachable); none counts toward a row's attempts"
    );
    describe_counter!(
        LOOKUP_FALLBACKS,
        "Failed lookups after an uncertain attempt that fell back to the retry under the same honoured key"
    );
    describe_counter!(
        UNRESOLVED,
        "Attempts that left an uncertain row unknown without charging (reason lookup_failed|key_expired), waiting for lookup, reconciliation or an operator"
    );

    for class in RESPONSE_CLASSES {
        counter!(PROVIDER_RESPONSES, "class" => class).increment(0);
    }
    for refusal in idem_charge::Refusal::ALL {
        counter!(REFUSALS, "status" => refusal.label()).increment(0);
    }
    for reason in UNRESOLVED_REASONS {
        counter!(UNRESOLVED, "reason" => reason).increment(0);
    }
    gauge!(BREAKER_OPEN).set(0.0);
    gauge!(LIVENESS_HELD).set(0.0);
    for cause in ["expired", "holder_gone"] {
        counter!(LEASE_RECLAIMS, "cause" => cause).increment(0);
    }
    for name in [
        CLAIMED_ROWS,
        FENCE_REFUSALS,
        ABANDONED,
        OVERRAN,
        BREAKER_OPENED,
        LOOKUP_FALLBACKS,
        SETTLE_RETRIES,
    ] {
        counter!(name).increment(0);
    }
}
