//! Claim rate against a backlog: does the claim stay flat as the outbox grows?
//!
//! Two shapes of backlog, each at a small and a large size, each in a fresh
//! database: `--claim-rows` pending rows (the work measured) on top of
//! - **history**: settled rows (`succeeded`), what the table accumulates
//!   until retention deletes it. The claim must not pay for them: its partial
//!   index (`outbox_due`) holds only due rows. This is the "flat cost" claim.
//! - **pending**: more pending rows — a queue that is behind. These are the
//!   work itself; the claim still reads the head of the index only.
//!
//! The rows are loaded with one `INSERT ... SELECT generate_series` (not
//! through the pipeline), then `VACUUM ANALYZE`d as autovacuum would. Each
//! measurement is three rounds (the median counts), each of which loads
//! `--claim-rows` fresh pending rows, then claims (`--claim-batch`) and settles
//! them (as succeeded, no provider, one statement per claim),
//! with the tuned configuration's claim SQL (per-account ordering or not),
//! one claim loop per `--replicas`.
//! Before it, `EXPLAIN (ANALYZE, BUFFERS)` of one claim, rolled back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgPool};
use tokio::task::JoinSet;

use super::args::BenchArgs;
use super::ceiling::settle_all;
use super::cpu::{PerMessage, Watch};
use super::pipeline::{Configuration, daemon_config};
use super::progress::{self, Progress};
use super::scratch::Scratch;
use idem_daemon::Config;

/// What the backlog is made of.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Settled rows.
    History,
    /// Pending rows.
    Pending,
}

impl Shape {
    /// Its name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::History => "history (settled)",
            Shape::Pending => "pending",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Backlog shape.
    pub shape: Shape,
    /// Backlog rows besides the work.
    pub backlog: i64,
    /// Seconds the backlog took to load and vacuum.
    pub load_s: f64,
    /// Rows claimed and settled.
    pub rows: usize,
    /// Claims (round trips) made.
    pub claims: usize,
    /// Rows claimed and settled per second: the median of the rounds.
    pub rows_per_s: f64,
    /// Each round's rate (each round claims `--claim-rows` fresh rows).
    pub rounds_rows_per_s: Vec<f64>,
    /// PostgreSQL CPU per row, µs.
    pub postgres_us_per_row: Option<f64>,
    /// The claim's plan before the measurement (large backlog only).
    pub explain: Vec<String>,
}

/// Small against large, per shape.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Backlog shape.
    pub shape: Shape,
    /// Rate at the large backlog over the rate at the small one.
    pub large_over_small: f64,
}

/// The claim-rate part.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimRateReport {
    /// Whether the claim SQL was the per-account ordered one.
    pub per_account_ordering: bool,
    /// Rows per claim.
    pub claim_batch: i64,
    /// Each measurement.
    pub measurements: Vec<Measurement>,
    /// Large over small, per shape.
    pub ratios: Vec<Ratio>,
}

/// Measure both shapes at both sizes with the claim settings of `cfg`.
pub async fn run(
    args: &BenchArgs,
    cfg: &Configuration,
    watch: &Watch,
) -> anyhow::Result<ClaimRateReport> {
    let mut measurements = Vec::new();
    let mut ratios = Vec::new();
    let mut settings = None;
    for shape in [Shape::History, Shape::Pending] {
        let mut rates = Vec::new();
        for backlog in [args.claim_backlog_small, args.claim_backlog_large] {
            let explain = backlog == args.claim_backlog_large;
            let scratch = Scratch::create(&args.database_url, &args.broker.amqp_url, false).await?;
            let outcome = async {
                let config = daemon_config(cfg, &scratch, "http://127.0.0.1:1", 0)?;
                let m = measure(args, &config, &scratch, watch, shape, backlog, explain).await?;
                anyhow::Ok((m, config))
            }
            .await;
            scratch.drop_all().await;
            let (m, config) = outcome?;
            rates.push(m.rows_per_s);
            measurements.push(m);
            settings = Some(config);
        }
        ratios.push(Ratio {
            shape,
            large_over_small: rates[1] / rates[0].max(1e-9),
        });
    }
    let config = settings.context("no claim-rate measurement ran")?;
    Ok(ClaimRateReport {
        per_account_ordering: config.dispatch.per_account_ordering,
        claim_batch: config.dispatch.claim_batch,
        measurements,
        ratios,
    })
}

async fn measure(
    args: &BenchArgs,
    config: &Config,
    scratch: &Scratch,
    watch: &Watch,
    shape: Shape,
    backlog: i64,
    explain: bool,
) -> anyhow::Result<Measurement> {
    let label = format!("{} {backlog}", shape.as_str());
    eprintln!("  claim rate, {label}: loading the backlog");
    let loading = Instant::now();
    {
        let mut conn = scratch.pool.acquire().await?;
        idem_store::bench::load_backlog(&mut conn, "backlog", backlog, shape == Shape::History)
            .await?;
    }
    let load_s = loading.elapsed().as_secs_f64();
    // The claims and settles run as a dispatcher runs them: on connections
    // that plan each statement once (`idem_store::db::DISPATCH_SESSION`).
    let pool =
        idem_store::connect_dispatch(&scratch.database_url, config.db_max_connections).await?;
    let mut rounds = Vec::new();
    let mut plan = Vec::new();
    let (mut rows, mut claims, mut pg_us) = (0, 0, Some(0.0));
    for round in 0..ROUNDS {
        {
            let mut conn = scratch.pool.acquire().await?;
            let work = format!("work-{round}");
            idem_store::bench::load_backlog(&mut conn, &work, args.claim_rows, false).await?;
            idem_store::bench::vacuum_outbox(&mut conn).await?;
        }
        if explain && round == 0 {
            plan = explain_claim(scratch, config).await?;
        }
        let r = timed_round(args, config, scratch, &pool, watch, &label).await?;
        rounds.push(r.rows as f64 / r.secs.max(1e-9));
        rows += r.rows;
        claims += r.claims;
        pg_us = pg_us.zip(r.postgres_us).map(|(a, b)| a + b);
    }
    pool.close().await;
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Measurement {
        shape,
        backlog,
        load_s,
        rows,
        claims,
        rows_per_s: sorted[sorted.len() / 2],
        rounds_rows_per_s: rounds,
        postgres_us_per_row: pg_us.map(|us| us / rows.max(1) as f64),
        explain: plan,
    })
}

/// Rounds per measurement; the median counts.
const ROUNDS: usize = 3;

/// One round's outcome.
struct Round {
    rows: usize,
    claims: usize,
    secs: f64,
    /// PostgreSQL CPU in all, µs.
    postgres_us: Option<f64>,
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of one claim, rolled back.
async fn explain_claim(scratch: &Scratch, config: &Config) -> anyhow::Result<Vec<String>> {
    let d = &config.dispatch;
    let mut conn = scratch.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let plan = idem_store::bench::explain_claim(
        &mut tx,
        "bench-explain",
        d.lease,
        d.claim_batch,
        d.per_account_ordering,
    )
    .await?;
    tx.rollback().await?;
    Ok(plan)
}

/// Claim and settle `--claim-rows` rows.
async fn timed_round(
    args: &BenchArgs,
    config: &Config,
    scratch: &Scratch,
    pool: &PgPool,
    watch: &Watch,
    label: &str,
) -> anyhow::Result<Round> {
    let total = usize::try_from(args.claim_rows).unwrap_or(0);
    let settled = Arc::new(AtomicUsize::new(0));
    let claims = Arc::new(AtomicUsize::new(0));
    let vacuum = scratch.vacuum_every(Duration::from_millis(args.vacuum_ms));
    let before = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let started = Instant::now();
    let mut loops = JoinSet::new();
    for r in 0..args.replicas.max(1) {
        loops.spawn(claim_loop(
            pool.clone(),
            config.clone(),
            format!("claim-{r}"),
            total,
            Arc::clone(&settled),
            Arc::clone(&claims),
        ));
    }
    let mut progress = Progress::new("claim", total as u64);
    progress::drive(&mut progress, "claim", &mut loops, || {
        (settled.load(Ordering::Relaxed) as u64, label.to_owned())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let after = watch.sample(&scratch.database(), scratch.upkeep_pid());
    vacuum.cancel();
    progress.finish();
    let rows = settled.load(Ordering::Relaxed);
    Ok(Round {
        rows,
        claims: claims.load(Ordering::Relaxed),
        secs,
        postgres_us: PerMessage::between(&before, &after, 1).postgres_us,
    })
}

/// Claim and settle until `total` rows are done (across loops).
async fn claim_loop(
    pool: PgPool,
    config: Config,
    owner: String,
    total: usize,
    settled: Arc<AtomicUsize>,
    claims: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let d = &config.dispatch;
    while settled.load(Ordering::Relaxed) < total {
        let rows = {
            let mut conn = pool.acquire().await?;
            idem_store::claim::claim(
                &mut conn,
                &owner,
                d.lease,
                d.claim_batch,
                d.per_account_ordering,
            )
            .await?
        };
        claims.fetch_add(1, Ordering::Relaxed);
        if rows.is_empty() {
            // Everything due is claimed by another loop; let it settle.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        settle_all(&pool, &rows).await?;
        let n = rows.len();
        settled.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}
