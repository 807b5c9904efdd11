//! `idem bench`: how fast the pipeline is on this machine, and where the time
//! goes — against the local PostgreSQL and RabbitMQ, the provider simulator
//! and the daemon in process.
//!
//! Parts (all by default; `--only` picks some):
//! - `baseline`: one message per transaction, one row per claim.
//! - `tuned`: [`TUNED_FLAGS`] on top of the daemon's defaults, or
//!   `--tuned-flags`.
//! - `latency`: tuned again, publishing at half the rate tuned reached (or
//!   `--latency-rate`): latency where the pipeline is not saturated.
//! - `ceiling`: the same SQL per message in a tight loop, no broker, no HTTP.
//! - `claim-rate`: claims/s against a small and a large backlog, and the
//!   claim's plan.
//!
//! Every part runs in a database of its own (`idem_bench_<random>`, dropped
//! after) and a queue of its own. Speed is measured here, never asserted by
//! a test.
//!
//! ## Layout
//! - `scratch`: the fresh database and queue, the simulator on its runtime.
//! - `pipeline`: one end-to-end configuration, its latency and throughput.
//! - `ceiling`: the SQL alone.
//! - `claim_rate`: the claim against backlogs, with `EXPLAIN`.
//! - `cpu`: CPU seconds per process from `/proc`.
//! - `progress`: the progress bar (or plain lines off a terminal).
//! - `report`: the tables, the ratios, `--json`.

mod ceiling;
mod claim_rate;
mod cpu;
mod pipeline;
mod progress;
mod report;
mod scratch;

use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

pub use ceiling::CeilingReport;
pub use claim_rate::{ClaimRateReport, Measurement, Ratio, Shape};
pub use cpu::PerMessage;
pub use pipeline::{Latency, PipelineReport, Settings};
pub use report::{BenchReport, Ratios};

use pipeline::Configuration;
use scratch::Scratch;

use crate::config::BrokerUrl;

/// Scope (`app_id`) of the bench's messages.
const SCOPE: &str = "bench";

/// The bench's workload: `messages` distinct originals in [`SCOPE`], ids
/// starting with `prefix`, nothing malformed or duplicated.
fn workload_spec(prefix: &str, messages: usize) -> crate::workload::Spec {
    crate::workload::Spec {
        prefix: prefix.to_owned(),
        scope: Some(SCOPE.to_owned()),
        distinct: messages,
        duplicates: 0,
        conflicts: 0,
        malformed: 0,
        seed: 11,
    }
}

/// The flags of the baseline: one message per transaction, one row per claim.
pub const BASELINE_FLAGS: &str = "--inbox-batch-size 1 --prefetch 10 --claim-batch 1";

/// The flags of the tuned configuration: the best this bench found on a
/// 2-core machine (docs/performance.md). Larger batches spread each
/// statement's and each commit's fixed cost over more messages; a dispatch
/// concurrency of 512 keeps 50 ms provider calls from capping the rate
/// (concurrency / latency = 10,240 calls/s); a 10 ms idle poll bounds how
/// long a recorded message waits for the dispatcher when it is idle.
pub const TUNED_FLAGS: &str = "--inbox-batch-size 1000 --prefetch 4000 --claim-batch 512 \
     --dispatch-concurrency 512 --results-batch 1000 --idle-poll-ms 10";

/// `idem bench` settings.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Messages per end-to-end configuration (and for the ceiling).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Provider (simulator) latency per call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub provider_latency_ms: u64,
    /// Settled outbox rows pre-loaded into every end-to-end and ceiling
    /// database (history the claim must not pay for).
    #[arg(long, default_value_t = 0)]
    pub backlog: i64,
    /// Daemon replicas per configuration (in process).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Publish rate cap of baseline and tuned, messages/s (0: as fast as
    /// publisher confirms allow).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Publish rate of the latency part (0: half the rate tuned reached).
    #[arg(long, default_value_t = 0)]
    pub latency_rate: u32,
    /// Run only these parts (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Leave out the baseline.
    #[arg(long)]
    pub skip_baseline: bool,
    /// `idem run` flags of the tuned configuration, on top of the daemon's
    /// defaults ("" for the defaults alone).
    #[arg(long, allow_hyphen_values = true, default_value = TUNED_FLAGS)]
    pub tuned_flags: String,
    /// `idem run` flags of the baseline.
    #[arg(long, allow_hyphen_values = true, default_value = BASELINE_FLAGS)]
    pub baseline_flags: String,
    /// claim-rate: the small backlog.
    #[arg(long, default_value_t = 10_000)]
    pub claim_backlog_small: i64,
    /// claim-rate: the large backlog.
    #[arg(long, default_value_t = 1_000_000)]
    pub claim_backlog_large: i64,
    /// claim-rate: rows claimed and settled per measurement.
    #[arg(long, default_value_t = 10_000)]
    pub claim_rows: i64,
    /// The PostgreSQL server; each part creates (and drops) a database
    /// `idem_bench_<random>` on it.
    #[arg(
        long,
        env = "IDEM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    #[command(flatten)]
    pub broker: BrokerUrl,
    /// Autovacuum's naptime, emulated: every this many ms, `VACUUM
    /// (ANALYZE)` the bench database's tables whose dead rows exceed
    /// autovacuum's default thresholds (0: never). For a server that runs
    /// without autovacuum, as this machine's does. Its CPU counts as
    /// PostgreSQL's.
    #[arg(long, default_value_t = 1000)]
    pub vacuum_ms: u64,
    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Give up on a configuration after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// A part of the bench.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One message per transaction, one row per claim.
    Baseline,
    /// [`TUNED_FLAGS`] or `--tuned-flags`.
    Tuned,
    /// Tuned at half its rate: latency below saturation.
    Latency,
    /// The same SQL without broker or HTTP.
    Ceiling,
    /// Claims/s against a small and a large backlog.
    ClaimRate,
}

impl BenchArgs {
    fn runs(&self, part: Part) -> bool {
        let chosen = self.only.is_empty() || self.only.contains(&part);
        chosen && !(part == Part::Baseline && self.skip_baseline)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.messages >= 1, "--messages must be at least 1");
        anyhow::ensure!(self.replicas >= 1, "--replicas must be at least 1");
        anyhow::ensure!(self.backlog >= 0, "--backlog must not be negative");
        anyhow::ensure!(
            self.claim_rows >= 1 && self.claim_backlog_small >= 0 && self.claim_backlog_large >= 0,
            "--claim-rows must be at least 1 and the claim backlogs not negative"
        );
        Ok(())
    }

    fn tuned(&self, name: &str, rate: u32) -> Configuration {
        Configuration {
            name: name.to_owned(),
            flags: split(&self.tuned_flags),
            rate,
        }
    }
}

fn split(flags: &str) -> Vec<String> {
    flags.split_whitespace().map(str::to_owned).collect()
}

/// Run the chosen parts and print the report (a table, or `--json`).
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let report = measure(&args, &shutdown).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Run the chosen parts; the report of all of them.
pub async fn measure(
    args: &BenchArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<BenchReport> {
    args.check()?;
    let started = Instant::now();
    let watch = cpu::Watch::new(
        port_of(&args.database_url, 5432),
        port_of(&args.broker.amqp_url, 5672),
    );
    let (pg_found, rabbit_found) = watch.found();
    eprintln!(
        "idem bench: {} messages, provider latency {} ms, backlog {}, {} replica(s){}{}",
        args.messages,
        args.provider_latency_ms,
        args.backlog,
        args.replicas,
        if pg_found {
            ""
        } else {
            "; PostgreSQL not local: its CPU is not measured"
        },
        if rabbit_found {
            ""
        } else {
            "; RabbitMQ not local: its CPU is not measured"
        },
    );
    let mut report = BenchReport::new(args);
    report.server_autovacuum = server_setting(&args.database_url, "autovacuum").await?;
    if args.runs(Part::Baseline) {
        let cfg = Configuration {
            name: "baseline".into(),
            flags: split(&args.baseline_flags),
            rate: args.rate,
        };
        report
            .configurations
            .push(pipeline::run(args, &cfg, &watch, shutdown).await?);
    }
    if args.runs(Part::Tuned) {
        let cfg = args.tuned("tuned", args.rate);
        report
            .configurations
            .push(pipeline::run(args, &cfg, &watch, shutdown).await?);
    }
    if args.runs(Part::Latency) {
        let rate = match (args.latency_rate, report.get("tuned")) {
            (0, Some(tuned)) => (tuned.end_to_end_msg_per_s / 2.0).round().max(1.0) as u32,
            (0, None) => bail!("the latency part needs the tuned part's rate, or --latency-rate"),
            (rate, _) => rate,
        };
        let cfg = args.tuned("latency", rate);
        report
            .configurations
            .push(pipeline::run(args, &cfg, &watch, shutdown).await?);
    }
    if args.runs(Part::Ceiling) {
        let cfg = args.tuned("tuned", 0);
        report.ceiling = Some(ceiling::run(args, &cfg, &watch).await?);
    }
    if args.runs(Part::ClaimRate) {
        let cfg = args.tuned("tuned", 0);
        report.claim_rate = Some(claim_rate::run(args, &cfg, &watch).await?);
    }
    report.finish(started.elapsed());
    Ok(report)
}

/// Pre-load `rows` settled outbox rows (history), if any.
async fn preload(scratch: &Scratch, rows: i64) -> anyhow::Result<()> {
    if rows == 0 {
        return Ok(());
    }
    eprintln!("  loading {rows} settled outbox rows");
    let mut conn = scratch.pool.acquire().await?;
    idem_store::bench::load_backlog(&mut conn, "backlog", rows, true)
        .await
        .context("loading the backlog")?;
    idem_store::bench::vacuum_outbox(&mut conn).await?;
    Ok(())
}

/// A setting of the PostgreSQL server of `url`.
async fn server_setting(url: &str, name: &str) -> anyhow::Result<String> {
    let pool = idem_store::connect(url, 1).await?;
    let value = idem_store::bench::setting(&mut *pool.acquire().await?, name).await?;
    pool.close().await;
    Ok(value)
}

/// The port of a URL on this machine (None when the host is elsewhere: its
/// CPU cannot be read from here).
fn port_of(raw: &str, default: u16) -> Option<u16> {
    let url = url::Url::parse(raw).ok()?;
    let local = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    local.then(|| url.port().unwrap_or(default))
}
