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
//! - `least-sql`: the least SQL the guarantees need (inbox key, outbox row,
//!   leased claim, fenced settle; 50 per transaction) in tables of its own:
//!   the end-to-end rate is printed against it.
//! - `recovery`: two replicas as child processes, one SIGKILLed every few
//!   seconds: each kill's rows charged how soon, the run against an
//!   undisturbed one.
//! - `skew`: a backlog on few accounts against the same spread wide, with
//!   the daemon's defaults: the rate against what per-account ordering allows.
//!
//! Every part runs in a database of its own (`idem_bench_<random>`, dropped
//! after) and a queue of its own. Speed is measured here, never asserted by
//! a test.
//!
//! ## Layout
//! - `args`: the settings, the parts, the workload they measure.
//! - `scratch`: the fresh database and queue, the simulator on its runtime.
//! - `pipeline`: one end-to-end configuration, its latency and throughput.
//! - `ceiling`: the SQL alone.
//! - `claim_rate`: the claim against backlogs, with `EXPLAIN`.
//! - `least`: the least-SQL ceiling.
//! - `recovery`: kills, and the time until the killed replica's rows settle.
//! - `skew`: few accounts against many.
//! - `trace`: charges per second, the median, the longest stall.
//! - `writes`: WAL bytes and row writes per message, per table.
//! - `cpu`: CPU seconds per process from `/proc`.
//! - `progress`: the progress bar (or plain lines off a terminal).
//! - `report`: the tables, the ratios, `--json`.

mod args;
mod ceiling;
mod claim_rate;
mod cpu;
mod least;
mod pipeline;
mod progress;
mod recovery;
mod report;
mod scratch;
mod skew;
mod trace;
mod writes;

use std::time::Instant;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

pub use args::{BASELINE_FLAGS, BenchArgs, Part, TUNED_FLAGS};
pub use ceiling::CeilingReport;
pub use claim_rate::{ClaimRateReport, Measurement, Ratio, Shape};
pub use cpu::PerMessage;
pub use least::LeastReport;
pub use pipeline::{Latency, PipelineReport, Settings};
pub use recovery::{Kill, RecoveryReport, RunReport};
pub use report::{BenchReport, Ratios};
pub use skew::SkewReport;
pub use trace::Trace;
pub use writes::{TablePerMessage, Writes};

use pipeline::Configuration;

/// The tuned configuration under `name`, publishing at `rate`.
fn tuned(args: &BenchArgs, name: &str, rate: u32) -> Configuration {
    Configuration::new(args, name, &args.tuned_flags, rate)
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
        let cfg = Configuration::new(args, "baseline", &args.baseline_flags, args.rate);
        report
            .configurations
            .push(pipeline::run(args, &cfg, &watch, shutdown).await?);
    }
    if args.runs(Part::Tuned) {
        let cfg = tuned(args, "tuned", args.rate);
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
        let cfg = tuned(args, "latency", rate);
        report
            .configurations
            .push(pipeline::run(args, &cfg, &watch, shutdown).await?);
    }
    if args.runs(Part::Ceiling) {
        let cfg = tuned(args, "tuned", 0);
        report.ceiling = Some(ceiling::run(args, &cfg, &watch).await?);
    }
    if args.runs(Part::ClaimRate) {
        let cfg = tuned(args, "tuned", 0);
        report.claim_rate = Some(claim_rate::run(args, &cfg, &watch).await?);
    }
    if args.runs(Part::Skew) {
        report.skew = Some(skew::run(args, &watch, shutdown).await?);
    }
    if args.runs(Part::LeastSql) {
        report.least_sql = Some(least::run(args, &watch).await?);
    }
    if args.runs(Part::Recovery) {
        report.recovery = Some(recovery::run(args, shutdown).await?);
    }
    report.finish(started.elapsed());
    Ok(report)
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
