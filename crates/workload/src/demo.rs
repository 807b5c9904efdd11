//! `idem demo`: the whole pipeline, end to end, on local services — the provider
//! simulator with faults on, three `idem run` replicas as child processes, a
//! workload with duplicates, conflicts and malformed messages — and a report
//! whose double and missing charges are counted at the provider. Local
//! servers that do not answer are replaced by private ones (`servers`).

mod servers;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use idem_simulator::{Faults, Simulator};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use idem_daemon::config::BrokerUrl;

use crate::scratch::{fresh_database, fresh_queue};
use crate::traffic::{self, Kind, Spec};

/// `idem demo` settings; the defaults are the scenario.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Messages to publish in all.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Share of the messages that are re-published duplicates.
    #[arg(long, default_value_t = 0.2)]
    pub duplicate_ratio: f64,
    /// Messages reusing a key with another payload (key conflicts).
    #[arg(long, default_value_t = 20)]
    pub conflicts: usize,
    /// Malformed messages (every kind of bad input).
    #[arg(long, default_value_t = 20)]
    pub malformed: usize,
    /// Worker replicas (child processes running `idem run`).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Probability that the provider processes a charge and drops the response.
    #[arg(long, default_value_t = 0.10)]
    pub drop_response: f64,
    /// Probability that the provider drops a request unprocessed.
    #[arg(long, default_value_t = 0.02)]
    pub drop_request: f64,
    /// Probability of a 5xx before processing.
    #[arg(long, default_value_t = 0.02)]
    pub error_5xx: f64,
    /// Provider latency in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub provider_latency_ms: u64,
    /// Demo database (dropped and re-created at start). When it is on this
    /// machine and nothing answers there, the demo starts a private
    /// PostgreSQL from the installed server binaries (likewise a private
    /// RabbitMQ node for a local --amqp-url that does not answer).
    #[arg(
        long,
        env = "IDEM_DEMO_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/idem_demo",
        hide_env_values = true
    )]
    pub database_url: String,
    #[command(flatten)]
    pub broker: BrokerUrl,
    /// Demo queue (deleted and re-declared at start).
    #[arg(long, default_value = "idem.demo")]
    pub queue: String,
    /// Give up waiting for the pipeline to settle after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// Run the demo; fails (non-zero exit) if any charge is doubled or missing.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let duplicates = (args.messages as f64 * args.duplicate_ratio).round() as usize;
    let distinct = args
        .messages
        .saturating_sub(duplicates + args.conflicts + args.malformed);
    let spec = Spec {
        prefix: format!("demo-{}", chrono::Utc::now().format("%H%M%S")),
        scope: Some("demo".into()),
        distinct,
        duplicates,
        conflicts: args.conflicts,
        malformed: args.malformed,
        accounts: crate::traffic::DEFAULT_ACCOUNTS,
        seed: 42,
    };
    let messages = traffic::generate(&spec);
    // Dropped last: the private servers outlive the replicas using them.
    let servers =
        servers::DemoServers::find_or_start(&args.database_url, &args.broker.amqp_url).await?;
    let args = DemoArgs {
        database_url: servers.database_url.clone(),
        broker: BrokerUrl {
            amqp_url: servers.amqp_url.clone(),
        },
        ..args
    };
    println!(
        "idem demo: {} messages ({distinct} distinct, {duplicates} duplicates, {} conflicts, {} malformed), {} replicas",
        messages.len(),
        args.conflicts,
        args.malformed,
        args.replicas
    );

    let pool = fresh_database(&args.database_url).await?;
    fresh_queue(&args.broker.amqp_url, &args.queue).await?;

    let faults = Faults {
        drop_response: args.drop_response,
        drop_request: args.drop_request,
        error_5xx: args.error_5xx,
        latency_ms: args.provider_latency_ms,
        ..Faults::default()
    };
    faults.validate().map_err(anyhow::Error::msg)?;
    let sim = Simulator::new(faults);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let sim_stop = CancellationToken::new();
    let sim_task = tokio::spawn({
        let (sim, stop) = (sim.clone(), sim_stop.clone());
        async move {
            sim.serve(listener, async move { stop.cancelled().await })
                .await
        }
    });
    println!(
        "provider simulator at {sim_url}: drop_response {:.0}%, drop_request {:.0}%, 5xx {:.0}%",
        args.drop_response * 100.0,
        args.drop_request * 100.0,
        args.error_5xx * 100.0
    );

    let mut workers = Vec::new();
    for n in 0..args.replicas {
        workers.push(spawn_worker(&args, &sim_url, n)?);
    }

    let started = Instant::now();
    let (amqp, channel) = {
        let c = idem_inbox::connect_amqp(&args.broker.amqp_url).await?;
        let ch = c.create_channel().await?;
        (c, ch)
    };
    let total = messages.len();
    traffic::publish(&channel, &args.queue, &messages, 0, |n| {
        if n % 2000 == 0 || n == total {
            println!("  published {n}/{total}");
        }
    })
    .await?;
    let _ = amqp.close(200, "published".into()).await;

    let settled = wait_until_settled(&pool, &spec, &args, &sim, &shutdown).await;
    let elapsed = started.elapsed();
    for worker in &mut workers {
        stop_worker(worker).await;
    }
    sim_stop.cancel();
    let _ = sim_task.await;

    let report = Report::build(&pool, &spec, &messages, &sim, elapsed).await?;
    print!("{}", report.table());
    settled?;
    if report.double > 0 || report.missing > 0 {
        bail!(
            "{} double and {} missing charges",
            report.double,
            report.missing
        );
    }
    Ok(())
}

fn spawn_worker(args: &DemoArgs, sim_url: &str, n: usize) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the idem binary")?;
    Command::new(exe)
        .arg("run")
        // The URLs are given directly; a `*_FILE` inherited from our own
        // environment would clash with them ("both set").
        .env_remove("IDEM_DATABASE_URL_FILE")
        .env_remove("IDEM_AMQP_URL_FILE")
        .env("IDEM_DATABASE_URL", &args.database_url)
        .env("IDEM_AMQP_URL", args.broker.amqp_url.expose())
        .env("IDEM_QUEUE", &args.queue)
        .env("IDEM_CHARGE_API_URL", sim_url)
        .env("IDEM_HTTP_ADDR", "127.0.0.1:0")
        .env("IDEM_REPLICA_ID", format!("demo-{n}"))
        .env("IDEM_CHARGE_TIMEOUT_MS", "1000")
        .env("IDEM_LEASE_SECS", "10")
        .env("IDEM_RETRY_BASE_MS", "100")
        .env("IDEM_RETRY_MAX_MS", "2000")
        .env("IDEM_DB_MAX_CONNECTIONS", "8")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting an idem replica")
}

async fn stop_worker(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn wait_until_settled(
    pool: &PgPool,
    spec: &Spec,
    args: &DemoArgs,
    sim: &Simulator,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let status = idem_store::status::read(&mut *pool.acquire().await?).await?;
        let done = status.inbox_keys as usize >= spec.distinct
            && status.quarantined as usize >= spec.malformed
            && status.open_rows() == 0;
        println!(
            "  inbox {:>6}  dup {:>5}  conflicts {:>3}  quarantined {:>3}  | outbox pending {:>5} in_flight {:>4} unknown {:>4} succeeded {:>6} | provider charges {:>6}",
            status.inbox_keys,
            status.duplicates,
            status.conflicts,
            status.quarantined,
            status.outbox_in(idem_store::OutboxState::Pending),
            status.outbox_in(idem_store::OutboxState::InFlight),
            status.outbox_in(idem_store::OutboxState::Unknown),
            status.outbox_in(idem_store::OutboxState::Succeeded),
            sim.ledger().charges.len(),
        );
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pipeline did not settle within {} s", args.timeout_secs);
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The demo's findings, counted at the provider.
#[derive(Debug)]
pub struct Report {
    published: usize,
    distinct: usize,
    charges: usize,
    duplicates_absorbed: i64,
    conflicts: i64,
    quarantined: i64,
    double: usize,
    missing: usize,
    faults: idem_simulator::Stats,
    elapsed: Duration,
}

impl Report {
    async fn build(
        pool: &PgPool,
        spec: &Spec,
        messages: &[traffic::Outgoing],
        sim: &Simulator,
        elapsed: Duration,
    ) -> anyhow::Result<Self> {
        let status = idem_store::status::read(&mut *pool.acquire().await?).await?;
        let ledger = sim.ledger();
        let mut per_reference: BTreeMap<String, usize> = BTreeMap::new();
        for charge in &ledger.charges {
            *per_reference
                .entry(charge.reference_id.clone())
                .or_default() += 1;
        }
        let scope = spec.scope.as_deref().unwrap_or(idem_message::DEFAULT_SCOPE);
        let missing = messages
            .iter()
            .filter(|m| m.kind == Kind::Original)
            .filter_map(|m| m.message_id.as_deref())
            .filter(|id| {
                let reference = idem_message::reference_id(scope, id).to_string();
                !per_reference.contains_key(&reference)
            })
            .count();
        Ok(Self {
            published: messages.len(),
            distinct: spec.distinct,
            charges: ledger.charges.len(),
            duplicates_absorbed: status.duplicates,
            conflicts: status.conflicts,
            quarantined: status.quarantined,
            double: per_reference.values().filter(|&&n| n > 1).count(),
            missing,
            faults: sim.stats(),
            elapsed,
        })
    }

    fn table(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rows = [
            ("messages published", self.published.to_string()),
            ("distinct messages", self.distinct.to_string()),
            ("provider charges", self.charges.to_string()),
            ("duplicates absorbed", self.duplicates_absorbed.to_string()),
            ("key conflicts", self.conflicts.to_string()),
            ("quarantined", self.quarantined.to_string()),
            (
                "responses dropped",
                self.faults.dropped_responses.to_string(),
            ),
            ("requests dropped", self.faults.dropped_requests.to_string()),
            ("5xx injected", self.faults.errors_5xx.to_string()),
            ("double charges", self.double.to_string()),
            ("missing charges", self.missing.to_string()),
            ("elapsed", format!("{secs:.1} s")),
            (
                "messages/s",
                format!("{:.0}", self.published as f64 / secs.max(1e-9)),
            ),
        ];
        let mut out = String::from("\nidem demo report (charges counted at the provider)\n");
        for (k, v) in rows {
            out.push_str(&format!("  {k:<22} {v:>10}\n"));
        }
        out
    }
}
