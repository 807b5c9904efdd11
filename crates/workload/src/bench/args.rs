//! `idem bench`'s settings, and the workload every part measures.

use clap::{Args, ValueEnum};
use idem_daemon::config::BrokerUrl;

use crate::traffic::Spec;

/// Scope (`app_id`) of the bench's messages.
pub(super) const SCOPE: &str = "bench";

/// The bench's workload: `messages` distinct originals over `accounts`
/// accounts in [`SCOPE`], ids starting with `prefix`, nothing malformed or
/// duplicated.
pub(super) fn workload_spec(prefix: &str, messages: usize, accounts: usize) -> Spec {
    Spec {
        prefix: prefix.to_owned(),
        scope: Some(SCOPE.to_owned()),
        distinct: messages,
        duplicates: 0,
        conflicts: 0,
        malformed: 0,
        accounts,
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
    /// Accounts the messages of baseline, tuned, latency and ceiling are
    /// spread over.
    #[arg(long, default_value_t = crate::traffic::DEFAULT_ACCOUNTS)]
    pub accounts: usize,
    /// skew: messages, published at once, with the daemon's default settings.
    #[arg(long, default_value_t = 20_000)]
    pub skew_messages: usize,
    /// skew: the few accounts they are spread over (one merchant's bulk run).
    #[arg(long, default_value_t = 5)]
    pub skew_accounts: usize,
    /// skew: the accounts of the same backlog spread wide, the comparison.
    #[arg(long, default_value_t = 2_000)]
    pub spread_accounts: usize,
    /// skew: provider latency per call, in milliseconds (per-account
    /// ordering allows accounts / latency charges per second at most).
    #[arg(long, default_value_t = 20)]
    pub skew_latency_ms: u64,
    /// recovery: messages per run (two replicas as child processes, a
    /// provider that loses 3% of answers and fails 3% of calls).
    #[arg(long, default_value_t = 1_500)]
    pub recovery_messages: usize,
    /// recovery: publish rate, msg/s.
    #[arg(long, default_value_t = 100)]
    pub recovery_rate: u32,
    /// recovery: seconds between two SIGKILLs in the killed run.
    #[arg(long, default_value_t = 4)]
    pub recovery_kill_every_secs: u64,
    /// recovery: provider latency per call, ms (and as much jitter).
    #[arg(long, default_value_t = 20)]
    pub recovery_latency_ms: u64,
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
    /// autovacuum's thresholds and `ANALYZE` those whose changed rows exceed
    /// its analyze thresholds, each table's own where the migrations set
    /// them (0: never). For a server that runs without autovacuum, as this
    /// machine's does. Its CPU counts as PostgreSQL's.
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
    /// A backlog on few accounts against the same spread wide, default
    /// settings: the rate against what per-account ordering allows.
    Skew,
    /// Replicas SIGKILLed mid-run: how soon their rows are charged, and the
    /// run's length against an undisturbed one.
    Recovery,
    /// The least SQL the guarantees need, in tables of its own: the ceiling
    /// no schema of idem's can beat here.
    LeastSql,
}

impl BenchArgs {
    pub(super) fn runs(&self, part: Part) -> bool {
        let chosen = self.only.is_empty() || self.only.contains(&part);
        chosen && !(part == Part::Baseline && self.skip_baseline)
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.messages >= 1, "--messages must be at least 1");
        anyhow::ensure!(self.replicas >= 1, "--replicas must be at least 1");
        anyhow::ensure!(self.backlog >= 0, "--backlog must not be negative");
        anyhow::ensure!(
            self.accounts >= 1 && self.skew_accounts >= 1 && self.spread_accounts >= 1,
            "--accounts, --skew-accounts and --spread-accounts must be at least 1"
        );
        anyhow::ensure!(
            self.recovery_messages >= 1
                && self.recovery_rate >= 1
                && self.recovery_kill_every_secs >= 1,
            "--recovery-messages, --recovery-rate and --recovery-kill-every-secs must be at least 1"
        );
        anyhow::ensure!(
            self.skew_messages >= 1 && self.skew_latency_ms >= 1,
            "--skew-messages and --skew-latency-ms must be at least 1"
        );
        anyhow::ensure!(
            self.claim_rows >= 1 && self.claim_backlog_small >= 0 && self.claim_backlog_large >= 0,
            "--claim-rows must be at least 1 and the claim backlogs not negative"
        );
        Ok(())
    }
}
