//! skew: a backlog on few accounts (one merchant's bulk run) against the same
//! backlog spread wide, both with the daemon's default settings (per-account
//! ordering on) and a provider that takes `--skew-latency-ms` per call.
//!
//! Per-account ordering lets one charge per account be in flight, so `k`
//! accounts allow at most `k / latency` charges per second; the skewed run
//! is reported against that bound (the round trips of claim and settle are
//! what keeps it below). The spread run is the comparison for PostgreSQL's
//! CPU per charge: a claim that walked the backlog would show there.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::args::BenchArgs;
use super::cpu::Watch;
use super::pipeline::{self, Configuration, PipelineReport};

/// The two runs and what they mean together.
#[derive(Debug, Clone, Serialize)]
pub struct SkewReport {
    /// Messages per run.
    pub messages: usize,
    /// Provider latency per call, ms.
    pub provider_latency_ms: u64,
    /// The skewed run's accounts.
    pub accounts: usize,
    /// The spread run's accounts.
    pub spread_accounts: usize,
    /// The backlog on few accounts.
    pub skewed: PipelineReport,
    /// The same backlog over many accounts.
    pub spread: PipelineReport,
    /// What ordering allows the skewed run: accounts / latency, charges/s.
    pub allowed_msg_per_s: f64,
    /// The skewed run's rate over that.
    pub skewed_over_allowed: f64,
    /// Time one account's charge takes, claim to next claim, ms
    /// (accounts / rate): the latency plus the round trips.
    pub account_cycle_ms: f64,
    /// PostgreSQL CPU per charge, skewed over spread.
    pub postgres_skewed_over_spread: Option<f64>,
}

/// Run both and compare.
pub async fn run(
    args: &BenchArgs,
    watch: &Watch,
    shutdown: &CancellationToken,
) -> anyhow::Result<SkewReport> {
    let configuration = |name: &str, accounts: usize| Configuration {
        messages: args.skew_messages,
        accounts,
        provider_latency_ms: args.skew_latency_ms,
        ..Configuration::new(args, name, "", 0)
    };
    let skewed = pipeline::run(
        args,
        &configuration("skewed", args.skew_accounts),
        watch,
        shutdown,
    )
    .await?;
    let spread = pipeline::run(
        args,
        &configuration("spread", args.spread_accounts),
        watch,
        shutdown,
    )
    .await?;
    let allowed = args.skew_accounts as f64 * 1000.0 / args.skew_latency_ms as f64;
    let rate = skewed.end_to_end_msg_per_s;
    Ok(SkewReport {
        messages: args.skew_messages,
        provider_latency_ms: args.skew_latency_ms,
        accounts: args.skew_accounts,
        spread_accounts: args.spread_accounts,
        allowed_msg_per_s: allowed,
        skewed_over_allowed: rate / allowed,
        account_cycle_ms: args.skew_accounts as f64 * 1000.0 / rate.max(1e-9),
        postgres_skewed_over_spread: skewed
            .cpu
            .postgres_us
            .zip(spread.cpu.postgres_us)
            .map(|(s, w)| s / w.max(1e-9)),
        skewed,
        spread,
    })
}
