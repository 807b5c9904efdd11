//! Prometheus metrics: the process-wide recorder, the description of every
//! metric, and the sampler of the table gauges.
//!
//! The library crates (`idem-inbox`, `idem-dispatch`) record through the
//! `metrics` facade; this module installs the Prometheus recorder behind it
//! and the health listener serves [`PrometheusHandle::render`] on `/metrics`.
//!
//! A `metrics` recorder is global to the process and can be installed only
//! once, so [`install`] does it on first use and hands every later caller the
//! same handle: several daemons in one process (the in-process tests) share one
//! registry, and their counters add up. The table gauges are sampled from the
//! database every [`SAMPLE_EVERY`], not on each scrape, so a scrape never runs
//! an aggregate query.
//!
//! The full list, with types, labels and meanings, is in `docs/operations.md`
//! ("Metrics"); keep the two in step.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use anyhow::anyhow;
use idem_store::OutboxState;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the table gauges are read from the database.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Histogram buckets in seconds (1 ms .. 10 s), for every `*_seconds` metric.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets in rows, for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Install the Prometheus recorder (first call in the process) and return the
/// shared handle. Fails only if some other `metrics` recorder was installed
/// in this process first.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(
                    Matcher::Full("idem_dispatch_settle_batch_rows".into()),
                    BATCH_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow!("cannot install the Prometheus metrics recorder: {e}"))
}

const DECISIONS: [&str; 5] = [
    "new",
    "duplicate",
    "conflict",
    "quarantined",
    "unrecordable",
];
const RESPONSE_CLASSES: [&str; 5] = [
    "succeeded",
    "declined",
    "not_processed",
    "uncertain",
    "rejected",
];

/// Help texts, and the labelled counters registered at zero so that every
/// series exists (and `rate()` works) before its first event.
fn describe() {
    describe_counter!(
        "idem_inbox_messages_total",
        "Deliveries decided by committed inbox transactions, by decision (new|duplicate|conflict|quarantined|unrecordable)"
    );
    describe_counter!(
        "idem_inbox_quarantined_total",
        "Deliveries quarantined as bad input, by reason code"
    );
    describe_counter!(
        "idem_inbox_batches_total",
        "Inbox transactions committed (one per batch of deliveries)"
    );
    describe_counter!(
        "idem_inbox_batch_retries_total",
        "Inbox transactions that failed and were retried with the batch held unacked"
    );
    describe_counter!(
        "idem_inbox_batch_fallbacks_total",
        "Inbox batches whose set-based statements the database refused, decided again message by message"
    );
    describe_histogram!(
        "idem_inbox_batch_seconds",
        Unit::Seconds,
        "Time of one committed inbox transaction, begin to commit"
    );
    describe_counter!(
        "idem_inbox_reconnects_total",
        "Live broker sessions lost by the consumer, each followed by reconnecting"
    );
    describe_gauge!(
        "idem_broker_connected",
        "1 while the inbox consumer has a live broker session, 0 while (re)connecting"
    );
    describe_counter!(
        "idem_dispatch_claimed_rows_total",
        "Outbox rows claimed with a lease by the dispatcher"
    );
    describe_histogram!(
        "idem_dispatch_claim_seconds",
        Unit::Seconds,
        "Time of one claim statement (successful ones), including acquiring a connection"
    );
    describe_histogram!(
        "idem_dispatch_attempt_seconds",
        Unit::Seconds,
        "One attempt for one row: lookup and/or charge call through the fenced settle, by response class"
    );
    describe_counter!(
        "idem_provider_responses_total",
        "Attempts by what the provider's answer meant (succeeded|declined|not_processed|uncertain|rejected)"
    );
    describe_histogram!(
        "idem_dispatch_settle_batch_rows",
        "Results written per statement by the dispatcher's recorder (group commit)"
    );
    describe_counter!(
        "idem_dispatch_fence_refusals_total",
        "Results refused by the lease fence (the lease expired during the call)"
    );
    describe_counter!(
        "idem_dispatch_abandoned_total",
        "Attempts whose result could not be written (database error while settling); the rescuer resolves the row"
    );
    describe_counter!(
        "idem_dispatch_overran_total",
        "Attempts cut off at 90% of the lease (provider or process too slow), recorded as uncertain through the fence"
    );
    describe_counter!(
        "idem_lease_reclaims_total",
        "In-flight rows whose lease expired, returned to play by this replica's rescuer"
    );
    describe_gauge!(
        "idem_outbox_rows",
        "Outbox rows by state (sampled from the database)"
    );
    describe_gauge!(
        "idem_outbox_expired_leases",
        "in_flight rows whose lease has expired, waiting for the rescuer (sampled)"
    );
    describe_gauge!(
        "idem_inbox_keys",
        "Distinct message keys held by the inbox (sampled)"
    );
    describe_gauge!(
        "idem_quarantine_rows",
        "Messages held in quarantine (sampled)"
    );
    describe_gauge!(
        "idem_status_sampled_timestamp_seconds",
        "Unix time of the last successful sample of the table gauges"
    );
    describe_gauge!(
        "idem_dispatch_in_flight",
        "Provider calls in flight in this replica (at most IDEM_DISPATCH_CONCURRENCY)"
    );
    describe_counter!(
        "idem_reconcile_runs_total",
        "Reconciliation runs completed by this process"
    );
    describe_counter!(
        "idem_reconcile_extra_charges_total",
        "Extra charges found at the provider (more than one succeeded charge for a reference)"
    );
    describe_counter!(
        "idem_reconcile_refunds_total",
        "Refunds of extra charges the provider confirmed"
    );
    describe_counter!(
        "idem_reconcile_rows_settled_total",
        "Rows settled as succeeded because reconciliation found their charge"
    );
    describe_counter!(
        "idem_reconcile_rows_requeued_total",
        "unknown rows re-queued because the provider had no charge for them after the grace period"
    );
    describe_counter!(
        "idem_reconcile_findings_total",
        "Mismatches reported for an operator, by kind (foreign_charge|missing_at_provider|charged_but_declined|charge_mismatch)"
    );
    describe_gauge!(
        "idem_reconcile_last_run_timestamp_seconds",
        "Unix time of this process's last completed reconciliation run"
    );
    describe_counter!(
        "idem_events_published_total",
        "Result events confirmed by the broker and deleted, by kind (settled|replayed|reply)"
    );
    describe_counter!(
        "idem_events_unroutable_total",
        "Result event publishes the broker returned as unroutable, by target (exchange|reply_to); not retried"
    );
    describe_counter!(
        "idem_events_failed_total",
        "Result events not confirmed (nack, lost channel, no confirm in time), backed off for a retry"
    );
    describe_counter!(
        "idem_events_reconnects_total",
        "Broker sessions lost by the result publisher, each followed by reconnecting"
    );
    describe_gauge!(
        "idem_events_backlog",
        "Result events waiting to be published (sampled by the publisher)"
    );
    describe_gauge!(
        "idem_events_oldest_seconds",
        "Age of the oldest result event waiting to be published (sampled by the publisher)"
    );
    describe_counter!(
        "idem_retention_deleted_total",
        "Rows deleted by retention past their window, by table (inbox|outbox|quarantine|key_conflict)"
    );
    describe_counter!(
        "idem_retention_passes_total",
        "Retention passes by outcome (completed: nothing old left; yielded: another replica held the lock; failed)"
    );
    describe_gauge!(
        "idem_retention_completed_timestamp_seconds",
        "Unix time this replica last completed a retention pass with nothing old left"
    );

    for kind in ["settled", "replayed", "reply"] {
        ::metrics::counter!("idem_events_published_total", "kind" => kind).increment(0);
    }
    for target in ["exchange", "reply_to"] {
        ::metrics::counter!("idem_events_unroutable_total", "target" => target).increment(0);
    }
    for counter in [
        "idem_reconcile_runs_total",
        "idem_reconcile_extra_charges_total",
        "idem_reconcile_refunds_total",
        "idem_reconcile_rows_settled_total",
        "idem_reconcile_rows_requeued_total",
    ] {
        ::metrics::counter!(counter).increment(0);
    }
    for kind in [
        "foreign_charge",
        "missing_at_provider",
        "charged_but_declined",
        "charge_mismatch",
    ] {
        ::metrics::counter!("idem_reconcile_findings_total", "kind" => kind).increment(0);
    }
    ::metrics::counter!("idem_events_failed_total").increment(0);
    ::metrics::counter!("idem_events_reconnects_total").increment(0);
    for decision in DECISIONS {
        ::metrics::counter!("idem_inbox_messages_total", "decision" => decision).increment(0);
    }
    for class in RESPONSE_CLASSES {
        ::metrics::counter!("idem_provider_responses_total", "class" => class).increment(0);
    }
    for name in [
        "idem_inbox_batches_total",
        "idem_inbox_batch_retries_total",
        "idem_inbox_batch_fallbacks_total",
        "idem_inbox_reconnects_total",
        "idem_dispatch_claimed_rows_total",
        "idem_dispatch_fence_refusals_total",
        "idem_dispatch_abandoned_total",
        "idem_dispatch_overran_total",
        "idem_lease_reclaims_total",
    ] {
        ::metrics::counter!(name).increment(0);
    }
    for table in crate::retention::Table::ALL {
        ::metrics::counter!("idem_retention_deleted_total", "table" => table.as_str()).increment(0);
    }
    for outcome in ["completed", "yielded", "failed"] {
        ::metrics::counter!("idem_retention_passes_total", "outcome" => outcome).increment(0);
    }
}

/// Read the table counts into the gauges every [`SAMPLE_EVERY`] until
/// `shutdown`, and run the recorder's upkeep. A failed read (database away)
/// leaves the last values; `idem_status_sampled_timestamp_seconds` tells their age.
pub async fn sample_tables(
    pool: PgPool,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(SAMPLE_EVERY, sample_once(&pool)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "sampling the table gauges failed"),
            Err(_) => tracing::debug!("sampling the table gauges timed out"),
        }
        handle.run_upkeep();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

async fn sample_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let status = idem_store::status::read(&mut conn).await?;
    for state in OutboxState::ALL {
        ::metrics::gauge!("idem_outbox_rows", "state" => state.as_str())
            .set(status.outbox_in(state) as f64);
    }
    ::metrics::gauge!("idem_outbox_expired_leases").set(status.expired_leases as f64);
    ::metrics::gauge!("idem_inbox_keys").set(status.inbox_keys as f64);
    ::metrics::gauge!("idem_quarantine_rows").set(status.quarantined as f64);
    ::metrics::gauge!("idem_status_sampled_timestamp_seconds")
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(())
}
