//! One end-to-end measurement: a fresh database and queue, the simulator,
//! `--replicas` daemons in process (`daemon::run`, the code `idem run` runs),
//! N messages published with confirms from a runtime of their own, until
//! every charge is recorded (the outbox row's `settled_at`).
//!
//! Latency is publish → recorded: the wall clock just before each message is
//! handed to the broker, against the `settled_at` PostgreSQL wrote when the
//! charge was recorded (one machine, one clock). Throughput is N over first
//! publish → last recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use lapin::options::QueueDeclareOptions;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::args::{BenchArgs, SCOPE, workload_spec};
use super::cpu::{PUBLISHER_THREADS, PerMessage, Watch};
use super::progress::Progress;
use super::scratch::{Provider, Scratch};
use super::trace::Trace;
use super::writes::{self, Writes};
use crate::traffic::{self, Outgoing};
use idem_daemon::{Config, RunArgs};

/// A configuration to measure.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// `baseline`, `tuned`, `latency`.
    pub name: String,
    /// `idem run` flags of this configuration (on top of the bench's own).
    pub flags: Vec<String>,
    /// Publish rate cap in messages/s (0: as fast as confirms allow).
    pub rate: u32,
    /// Messages to publish.
    pub messages: usize,
    /// Accounts they are spread over.
    pub accounts: usize,
    /// Provider (simulator) latency per call, in milliseconds.
    pub provider_latency_ms: u64,
}

impl Configuration {
    /// `name` with `flags` at `rate`, over the bench's messages, accounts and
    /// provider latency.
    pub fn new(args: &BenchArgs, name: &str, flags: &str, rate: u32) -> Self {
        Self {
            name: name.to_owned(),
            flags: flags.split_whitespace().map(str::to_owned).collect(),
            rate,
            messages: args.messages,
            accounts: args.accounts,
            provider_latency_ms: args.provider_latency_ms,
        }
    }
}

/// What one configuration reached.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// Configuration name.
    pub name: String,
    /// Its `idem run` flags.
    pub flags: String,
    /// The settings in force (defaults included).
    pub settings: Settings,
    /// Publish rate cap (0: none).
    pub rate_cap: u32,
    /// Messages published.
    pub messages: usize,
    /// Distinct messages charged at the provider.
    pub charged: usize,
    /// Messages charged more than once at the provider.
    pub double_charges: usize,
    /// Messages never charged.
    pub missing_charges: usize,
    /// Messages/s the publisher reached (confirmed).
    pub publish_msg_per_s: f64,
    /// First publish to last charge recorded, seconds.
    pub elapsed_s: f64,
    /// N / elapsed.
    pub end_to_end_msg_per_s: f64,
    /// Publish → settled (charged, and its result recorded).
    pub latency_ms: Latency,
    /// Publish → recorded: the inbox transaction that recorded the message
    /// began (`outbox.created_at`); it commits within that transaction's
    /// time (`idem_inbox_batch_seconds`).
    pub recorded_ms: Latency,
    /// CPU per message, per process.
    pub cpu: PerMessage,
    /// WAL and row writes per message.
    pub writes: Writes,
    /// Charges recorded per second, and the longest stall.
    pub trace: Trace,
}

/// The settings that matter for speed.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `--prefetch`.
    pub prefetch: u16,
    /// `--inbox-batch-size`.
    pub inbox_batch_size: usize,
    /// `--inbox-batch-linger-ms`.
    pub inbox_batch_linger_ms: u128,
    /// `--claim-batch`.
    pub claim_batch: i64,
    /// `--dispatch-concurrency`.
    pub dispatch_concurrency: usize,
    /// `--db-max-connections`.
    pub db_max_connections: u32,
    /// `--per-account-ordering`.
    pub per_account_ordering: bool,
    /// `--idle-poll-ms`.
    pub idle_poll_ms: u128,
    /// `--results-batch`.
    pub results_batch: i64,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            prefetch: config.inbox.prefetch,
            inbox_batch_size: config.inbox.batch_size,
            inbox_batch_linger_ms: config.inbox.batch_linger.as_millis(),
            claim_batch: config.dispatch.claim_batch,
            dispatch_concurrency: config.dispatch.concurrency,
            db_max_connections: config.db_max_connections,
            per_account_ordering: config.dispatch.per_account_ordering,
            idle_poll_ms: config.dispatch.idle_poll.as_millis(),
            results_batch: config.results.batch,
        }
    }
}

/// Latency percentiles in milliseconds, from an HDR histogram of microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// The validated daemon configuration of replica `n` of `cfg` in `scratch`:
/// the bench's fixed flags (where, and periodic jobs out of the way), then the
/// configuration's own (later flags win).
pub fn daemon_config(
    cfg: &Configuration,
    scratch: &Scratch,
    sim_url: &str,
    n: usize,
) -> anyhow::Result<Config> {
    let mut argv = vec!["idem".to_owned()];
    argv.extend(run_flags(cfg, scratch, sim_url, n));
    let args = RunCli::try_parse_from(argv)
        .with_context(|| format!("bad flags for the {} configuration", cfg.name))?
        .run;
    args.validate()
}

/// The `idem run` flags of replica `n` of `cfg` in `scratch` (see
/// [`daemon_config`]), also for a replica run as a child process.
pub fn run_flags(cfg: &Configuration, scratch: &Scratch, sim_url: &str, n: usize) -> Vec<String> {
    let replica = replica_id(cfg, n);
    let mut flags: Vec<String> = [
        "--database-url",
        &scratch.database_url,
        "--amqp-url",
        &scratch.amqp_url,
        "--queue",
        &scratch.queue,
        "--charge-api-url",
        sim_url,
        "--http-addr",
        "127.0.0.1:0",
        "--replica-id",
        &replica,
        // Background jobs would disturb the measurement: no reconciliation,
        // retention's first pass a day away.
        "--reconcile-interval-secs",
        "0",
        "--retention-interval-secs",
        "86400",
        "--shutdown-grace-secs",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(cfg.flags.iter().cloned());
    flags
}

/// The name (lease owner) of replica `n` of `cfg`.
pub fn replica_id(cfg: &Configuration, n: usize) -> String {
    format!("bench-{}-{n}", cfg.name)
}

/// Measure `cfg` in a fresh database and queue, dropped after.
pub async fn run(
    args: &BenchArgs,
    cfg: &Configuration,
    watch: &Watch,
    shutdown: &CancellationToken,
) -> anyhow::Result<PipelineReport> {
    let scratch = Scratch::create(&args.database_url, &args.broker.amqp_url, true).await?;
    let outcome = async {
        scratch.preload(args.backlog).await?;
        let provider = Provider::start(cfg.provider_latency_ms)?;
        let vacuum = scratch.vacuum_every(Duration::from_millis(args.vacuum_ms));
        let outcome = drive(args, cfg, watch, &scratch, &provider, shutdown).await;
        vacuum.cancel();
        provider.stop();
        outcome
    }
    .await;
    scratch.drop_all().await;
    outcome
}

type Daemon = (CancellationToken, JoinHandle<anyhow::Result<()>>);

async fn drive(
    args: &BenchArgs,
    cfg: &Configuration,
    watch: &Watch,
    scratch: &Scratch,
    provider: &Provider,
    shutdown: &CancellationToken,
) -> anyhow::Result<PipelineReport> {
    let settings = Settings::of(&daemon_config(cfg, scratch, &provider.url, 0)?);
    let mut daemons: Vec<Daemon> = Vec::new();
    for n in 0..args.replicas {
        let config = daemon_config(cfg, scratch, &provider.url, n)?;
        let stop = CancellationToken::new();
        daemons.push((stop.clone(), tokio::spawn(idem_daemon::run(config, stop))));
    }
    let measured = async {
        wait_for_consumers(scratch, args.replicas, &mut daemons).await?;
        let hold = writes::WalHold::start(&scratch.database_url, cfg.messages).await?;
        let before = writes::sample(&scratch.pool).await?;
        let measured = measure(args, cfg, watch, scratch, provider, &mut daemons, shutdown).await?;
        anyhow::Ok((measured, before, hold))
    }
    .await;
    for (stop, _) in &daemons {
        stop.cancel();
    }
    for (_, handle) in daemons {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "a bench replica failed"),
            Err(e) => tracing::warn!(error = %e, "a bench replica panicked"),
        }
    }
    let ((publish_secs, stamps, elapsed, cpu), before, hold) = measured?;
    // A session flushes its counters when it ends or within a second of
    // going idle (PostgreSQL 15): the replicas have stopped; give any
    // session still open that second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = writes::sample(&scratch.pool).await?;
    let writes = writes::measure(hold, &before, &after, cfg.messages).await?;
    report(
        cfg,
        writes,
        settings,
        scratch,
        provider,
        publish_secs,
        &stamps,
        elapsed,
        cpu,
    )
    .await
}

/// The publish stamps and counts of one run, before the report reads the
/// database and the ledger.
type Measured = (f64, Stamps, Duration, PerMessage);

/// Each message (by id) and the wall-clock microseconds it was published at.
type Stamps = HashMap<String, i64>;

async fn measure(
    args: &BenchArgs,
    cfg: &Configuration,
    watch: &Watch,
    scratch: &Scratch,
    provider: &Provider,
    daemons: &mut [Daemon],
    shutdown: &CancellationToken,
) -> anyhow::Result<Measured> {
    let spec = workload_spec(&format!("bench-{}", scratch.id), cfg.messages, cfg.accounts);
    let messages = Arc::new(traffic::generate(&spec));
    let total = messages.len();
    let published = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(PUBLISHER_THREADS)
        .enable_all()
        .build()
        .context("starting the publisher's runtime")?;

    let before = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let started = Instant::now();
    let mut publisher = runtime.spawn(publish_all(
        scratch.amqp_url.clone(),
        scratch.queue.clone(),
        Arc::clone(&messages),
        cfg.rate,
        Arc::clone(&published),
    ));
    let mut progress = Progress::new(&cfg.name, total as u64);
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut publish_result = None;
    loop {
        let charged = provider.sim.stats().charges_created;
        let sent = published.load(Ordering::Relaxed);
        progress.update(charged, &format!("charged, {sent} published"));
        if charged as usize >= total {
            let settled =
                idem_store::bench::count_settled(&mut *scratch.pool.acquire().await?, SCOPE)
                    .await?;
            if settled as usize >= total {
                break;
            }
        }
        if publish_result.is_none() && publisher.is_finished() {
            let result = (&mut publisher).await.context("the publisher panicked")??;
            publish_result = Some(result);
        }
        if let Some((stop, _)) = daemons.iter().find(|(_, h)| h.is_finished()) {
            stop.cancel();
            bail!("a daemon replica stopped during the run (see the log above)");
        }
        if Instant::now() > deadline {
            bail!(
                "{}: not every charge was recorded within {} s (raise --timeout-secs)",
                cfg.name,
                args.timeout_secs
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let after = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let elapsed = started.elapsed();
    progress.finish();
    let (publish_secs, stamps) = match publish_result {
        Some(r) => r,
        None => publisher.await.context("the publisher panicked")??,
    };
    runtime.shutdown_background();
    let stamps = messages
        .iter()
        .zip(stamps)
        .filter_map(|(m, at)| Some((m.message_id.clone()?, at)))
        .collect();
    Ok((
        publish_secs,
        stamps,
        elapsed,
        PerMessage::between(&before, &after, total),
    ))
}

/// Publish every message with confirms; returns how long that took and
/// each message's publish time (wall clock, µs since the epoch).
pub(super) async fn publish_all(
    amqp_url: String,
    queue: String,
    messages: Arc<Vec<Outgoing>>,
    rate: u32,
    published: Arc<AtomicUsize>,
) -> anyhow::Result<(f64, Vec<i64>)> {
    let connection = idem_inbox::connect_amqp(&amqp_url).await?;
    let channel = connection.create_channel().await?;
    let mut stamps = vec![0i64; messages.len()];
    let started = Instant::now();
    traffic::publish_observed(
        &channel,
        &queue,
        &messages,
        rate,
        |i| stamps[i] = chrono::Utc::now().timestamp_micros(),
        |n| published.store(n, Ordering::Relaxed),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "published".into()).await;
    Ok((secs, stamps))
}

/// Wait until every replica consumes from the queue, so start-up (connect,
/// migrate) is not measured.
async fn wait_for_consumers(
    scratch: &Scratch,
    replicas: usize,
    daemons: &mut [Daemon],
) -> anyhow::Result<()> {
    let connection = idem_inbox::connect_amqp(&scratch.amqp_url).await?;
    let channel = connection.create_channel().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queue = channel
            .queue_declare(
                scratch.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        if queue.consumer_count() as usize >= replicas {
            break;
        }
        if daemons.iter().any(|(_, h)| h.is_finished()) {
            bail!("a daemon replica failed to start (see the log above)");
        }
        if Instant::now() > deadline {
            bail!("the daemon replicas did not start consuming within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = connection.close(200, "ready".into()).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn report(
    cfg: &Configuration,
    writes: Writes,
    settings: Settings,
    scratch: &Scratch,
    provider: &Provider,
    publish_secs: f64,
    stamps: &Stamps,
    elapsed: Duration,
    cpu: PerMessage,
) -> anyhow::Result<PipelineReport> {
    let rows = idem_store::bench::row_times(&mut *scratch.pool.acquire().await?, SCOPE).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut recorded = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let first_publish = stamps.values().copied().min().unwrap_or(0);
    let mut last_settled = first_publish;
    for (message_id, created_at, settled_at) in &rows {
        let Some(at) = stamps.get(message_id) else {
            continue;
        };
        recorded.saturating_record((created_at.timestamp_micros() - at).max(1) as u64);
        let Some(settled) = settled_at else {
            continue;
        };
        let settled = settled.timestamp_micros();
        last_settled = last_settled.max(settled);
        histogram.saturating_record((settled - at).max(1) as u64);
    }
    let span = Duration::from_micros((last_settled - first_publish).max(1) as u64);
    let trace = Trace::of(
        first_publish,
        rows.iter()
            .filter(|(id, _, _)| stamps.contains_key(id))
            .filter_map(|(_, _, at)| at.map(|t| t.timestamp_micros())),
    );
    let by_reference = provider.sim.ledger().gross_by_reference();
    let (mut charged, mut double) = (0, 0);
    for id in stamps.keys() {
        let reference = idem_message::reference_id(SCOPE, id).to_string();
        match by_reference.get(&reference).copied().unwrap_or(0) {
            0 => {}
            1 => charged += 1,
            _ => {
                charged += 1;
                double += 1;
            }
        }
    }
    let messages = cfg.messages;
    tracing::debug!(?elapsed, "configuration measured");
    Ok(PipelineReport {
        name: cfg.name.clone(),
        flags: cfg.flags.join(" "),
        settings,
        rate_cap: cfg.rate,
        messages,
        charged,
        double_charges: double,
        missing_charges: messages - charged,
        publish_msg_per_s: messages as f64 / publish_secs.max(1e-9),
        elapsed_s: span.as_secs_f64(),
        end_to_end_msg_per_s: messages as f64 / span.as_secs_f64(),
        latency_ms: Latency::of(&histogram),
        recorded_ms: Latency::of(&recorded),
        cpu,
        writes,
        trace,
    })
}
