//! Prometheus metrics: the process-wide recorder, every crate's metric
//! descriptions, and the sampler of the table gauges (this crate's own).
//!
//! Each crate that records metrics (`idem-inbox`, `idem-dispatch`,
//! `idem-events`, `idem-reconcile`, `idem-retention`) owns their names and
//! help texts in its `metrics` module and records through the `metrics`
//! facade; this module installs the Prometheus recorder behind it, has every
//! crate describe its metrics, and the health listener serves
//! [`PrometheusHandle::render`] on `/metrics`.
//!
//! A `metrics` recorder is global to the process and can be installed only
//! once, so [`install`] does it on first use and hands every later caller the
//! same handle: several daemons in one process (the in-process tests) share one
//! registry, and their counters add up. The table gauges are sampled from the
//! database every [`SAMPLE_EVERY`], not on each scrape, so a scrape never runs
//! an aggregate query; and a sample never counts the history: open work is
//! counted exactly through partial indexes, the history tables (inbox keys,
//! settled outbox rows, quarantine) are the planner's estimates.
//!
//! Two families are not idem's own work: [`BUILD_INFO`] (which build is
//! running, set once at install) and the standard `process_*` metrics of
//! [`PROCESS`] (CPU, memory, file descriptors, start time), read from the OS by
//! `metrics-process` on each scrape ([`collect_process`]) so they are as fresh
//! as the scrape and cost nothing between scrapes.
//!
//! The full list, with types, labels and meanings, is in `docs/operations.md`
//! ("Metrics"); keep the two in step.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::describe_gauge;
use anyhow::anyhow;
use idem_periodic::{Every, Job, Start};
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

/// The process-metrics collector: built once, as its metric names are
/// allocated on construction.
static PROCESS_COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();

fn process_collector() -> &'static metrics_process::Collector {
    PROCESS_COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Read the process metrics ([`PROCESS`]) from the OS into the recorder; the
/// `/metrics` handler calls it before each render.
pub fn collect_process() {
    process_collector().collect();
}

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
                    Matcher::Full(idem_dispatch::metrics::SETTLE_BATCH_ROWS.into()),
                    BATCH_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(
                    Matcher::Full(idem_inbox::metrics::PUBLISH_LAG_SECONDS.into()),
                    idem_inbox::metrics::LAG_BUCKETS,
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

/// Gauge, label `state` (`OutboxState::as_str`): outbox rows by state; the
/// settled states are estimates (`idem_store::status::is_estimated`).
pub const OUTBOX_ROWS: &str = "idem_outbox_rows";
/// Gauge: `in_flight` rows whose lease has expired, waiting for the rescuer.
pub const OUTBOX_EXPIRED_LEASES: &str = "idem_outbox_expired_leases";
/// Gauge: distinct message keys held by the inbox (an estimate).
pub const INBOX_KEYS: &str = "idem_inbox_keys";
/// Gauge: messages held in quarantine (an estimate).
pub const QUARANTINE_ROWS: &str = "idem_quarantine_rows";
/// Gauge, Unix seconds: the last successful sample of the table gauges (the
/// age of the others).
pub const STATUS_SAMPLED_TIMESTAMP_SECONDS: &str = "idem_status_sampled_timestamp_seconds";

/// Gauge, value 1, labels `version` (the crate version, `CARGO_PKG_VERSION`)
/// and `profile` (`release` or `debug`): which build a replica runs, to join
/// on (`* on(instance) group_left(version) idem_build_info`) or to spot a
/// fleet half upgraded.
pub const BUILD_INFO: &str = "idem_build_info";

/// The standard Prometheus process metrics `metrics-process` exports on Linux
/// (not `idem_*`: dashboards and alerts share them with every other service).
pub const PROCESS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Every metric of this crate.
pub const ALL: &[&str] = &[
    BUILD_INFO,
    OUTBOX_ROWS,
    OUTBOX_EXPIRED_LEASES,
    INBOX_KEYS,
    QUARANTINE_ROWS,
    STATUS_SAMPLED_TIMESTAMP_SECONDS,
];

/// Every metric a replica can export, by the crate that records it (each
/// crate's `metrics::ALL`).
pub const EXPORTED: [&[&str]; 6] = [
    idem_inbox::metrics::ALL,
    idem_dispatch::metrics::ALL,
    idem_events::metrics::ALL,
    idem_reconcile::metrics::ALL,
    idem_retention::metrics::ALL,
    ALL,
];

/// Every crate's help texts and its counters registered at zero (so that
/// every series exists, and `rate()` works, before its first event).
fn describe() {
    idem_inbox::metrics::describe();
    idem_dispatch::metrics::describe();
    idem_events::metrics::describe();
    idem_reconcile::metrics::describe();
    idem_retention::metrics::describe();
    describe_gauge!(
        OUTBOX_ROWS,
        "Outbox rows by state (sampled): pending, in_flight, unknown and dead exact; succeeded and declined estimated from the planner's statistics"
    );
    describe_gauge!(
        OUTBOX_EXPIRED_LEASES,
        "in_flight rows whose lease has expired, waiting for the rescuer (sampled)"
    );
    describe_gauge!(
        INBOX_KEYS,
        "Distinct message keys held by the inbox (sampled; an estimate from the planner's statistics)"
    );
    describe_gauge!(
        QUARANTINE_ROWS,
        "Messages held in quarantine (sampled; an estimate from the planner's statistics)"
    );
    describe_gauge!(
        STATUS_SAMPLED_TIMESTAMP_SECONDS,
        "Unix time of the last successful sample of the table gauges"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which build this replica runs"
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "profile" => profile)
        .set(1.0);
    process_collector().describe();
}

/// Read the table gauges about every [`SAMPLE_EVERY`]
/// (first at once) until `shutdown`, and run the recorder's upkeep. A failed
/// read (database away) leaves the last values;
/// [`STATUS_SAMPLED_TIMESTAMP_SECONDS`] tells their age.
pub async fn sample_tables(
    pool: PgPool,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = Every::new(SAMPLE_EVERY).starting(Start::Now);
    idem_periodic::run(Sampler { pool, handle }, every, shutdown).await;
    Ok(())
}

/// The table-gauge sampler as a periodic job.
struct Sampler {
    pool: PgPool,
    handle: PrometheusHandle,
}

impl Job for Sampler {
    type Report = ();

    fn name(&self) -> &'static str {
        "table-gauge sampler"
    }

    async fn run_once(&mut self, _shutdown: &CancellationToken) -> anyhow::Result<()> {
        // Upkeep whatever the read does: the recorder's histograms need it.
        let read = tokio::time::timeout(SAMPLE_EVERY, sample_once(&self.pool)).await;
        self.handle.run_upkeep();
        match read {
            Ok(read) => Ok(read?),
            Err(_) => anyhow::bail!("reading the table counts took over {SAMPLE_EVERY:?}"),
        }
    }

    fn failed(&mut self, error: &anyhow::Error, _retry_in: Duration) {
        // The gauges' age is the signal; the database's own alerts say why.
        tracing::debug!(
            error = format!("{error:#}"),
            "sampling the table gauges failed"
        );
    }
}

/// Longest one sample's statements may run (the server cancels them): well
/// inside [`SAMPLE_EVERY`], so the connection is back in the pool before the
/// next sample is due even when the database is slow.
pub const SAMPLE_STATEMENT_TIMEOUT: Duration = Duration::from_millis(2_000);

/// One sample: a pooled connection taken for it and given back at the end
/// (never kept between samples), one read-only transaction whose statements
/// are bounded by open work (`idem_store::status::sample`), never a count of
/// the history tables.
async fn sample_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let sample = idem_store::status::sample(&mut conn, SAMPLE_STATEMENT_TIMEOUT).await?;
    drop(conn);
    for state in OutboxState::ALL {
        ::metrics::gauge!(OUTBOX_ROWS, "state" => state.as_str())
            .set(sample.outbox_in(state) as f64);
    }
    ::metrics::gauge!(OUTBOX_EXPIRED_LEASES).set(sample.expired_leases as f64);
    ::metrics::gauge!(INBOX_KEYS).set(sample.inbox_keys as f64);
    ::metrics::gauge!(QUARANTINE_ROWS).set(sample.quarantined as f64);
    ::metrics::gauge!(STATUS_SAMPLED_TIMESTAMP_SECONDS)
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::{BUILD_INFO, EXPORTED, PROCESS, collect_process, install};

    /// The metric names of the `# HELP` lines of a scrape.
    fn helped(scrape: &str) -> BTreeSet<String> {
        scrape
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }

    /// idem's own metrics of a scrape (not the process ones).
    fn helped_idem(scrape: &str) -> BTreeSet<String> {
        helped(scrape)
            .into_iter()
            .filter(|n| n.starts_with("idem_"))
            .collect()
    }

    #[test]
    fn the_scrape_has_build_info_and_the_process_metrics() {
        let handle = install().unwrap();
        collect_process();
        let scrape = handle.render();
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(BUILD_INFO) && l.contains(&version) && l.ends_with(" 1")),
            "{scrape}"
        );
        let helped = helped(&scrape);
        for name in PROCESS {
            assert!(helped.contains(*name), "{name} missing from {scrape}");
        }
    }

    #[test]
    fn every_crates_metrics_are_described_on_the_scrape() {
        let handle = install().unwrap();
        let names: Vec<&str> = EXPORTED.iter().flat_map(|c| c.iter().copied()).collect();
        let exported: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            exported.len(),
            names.len(),
            "a name listed twice: {names:?}"
        );

        // The exporter prints a help line only for a metric with a series,
        // and the gauges and histograms have none until first recorded: give
        // each one (its kind does not matter to the help line).
        let registered = helped_idem(&handle.render());
        for name in names.iter().filter(|n| !registered.contains(**n)) {
            ::metrics::gauge!(*name).set(0.0);
        }
        assert_eq!(helped_idem(&handle.render()), exported);
    }
}
