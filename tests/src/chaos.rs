//! The chaos suite: idem's guarantees while the world around it breaks.
//!
//! On one machine, without touching the shared services: its own PostgreSQL
//! cluster and RabbitMQ node, TCP proxies in front of both (connection cuts),
//! the provider simulator with faults, and several `idem run` processes. A
//! workload with every kind of duplicate, key conflicts, declines and malformed
//! messages runs while a scheduler injects faults in rotation; then the suite
//! waits for quiescence and checks every invariant, counted at the provider.
//!
//! A run has the test process to itself ([`gate::alone`]): its fault timings
//! and settle deadlines assume the machine is not shared with other suites.
//!
//! ## Layout
//! - this module: [`Profile`] (how hard, how long) and [`run`];
//! - `plan`: the workload and what it must end as;
//! - `publisher`: a producer that survives broker restarts;
//! - `faults`: the fault kinds and their scheduler;
//! - `workers`: the supervised `idem run` processes;
//! - `check`: quiescence and the invariants, into a [`Report`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use idem_simulator::{Faults, Simulator};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::pg::PgCluster;
use crate::proxy::TcpProxy;
use crate::rabbit::RabbitNode;
use crate::{gate, init, sim};

mod check;
mod faults;
mod plan;
mod publisher;
mod report;
mod workers;

pub use faults::FaultKind;
use plan::Plan;
pub use report::Report;
use workers::Workers;

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name printed in the table.
    pub name: &'static str,
    /// Distinct valid messages.
    pub distinct: usize,
    /// Re-published copies (published again later).
    pub duplicates: usize,
    /// Keys published twice at the same moment on two channels.
    pub concurrent_pairs: usize,
    /// Same key, other payload (published after the originals were recorded).
    pub conflicts: usize,
    /// Malformed messages.
    pub malformed: usize,
    /// Messages for accounts the provider declines.
    pub declines: usize,
    /// `idem run` processes.
    pub workers: usize,
    /// Messages per second the producer publishes at.
    pub publish_rate: u32,
    /// Pause between two injected faults.
    pub fault_interval: Duration,
    /// Rounds of the full fault rotation (each kind once per round), at least.
    pub min_rounds: usize,
    /// Longest wait for quiescence after the faults stop.
    pub settle_timeout: Duration,
}

impl Profile {
    /// The CI profile: a couple of minutes, every fault kind at least once.
    pub fn short() -> Self {
        Self {
            name: "short",
            distinct: 1500,
            duplicates: 300,
            concurrent_pairs: 100,
            conflicts: 30,
            malformed: 30,
            declines: 30,
            workers: 3,
            publish_rate: 30,
            fault_interval: Duration::from_secs(3),
            min_rounds: 1,
            settle_timeout: Duration::from_secs(180),
        }
    }

    /// The soak profile: 100,000 messages, about half an hour of faults.
    pub fn soak() -> Self {
        Self {
            name: "soak",
            distinct: 80_000,
            duplicates: 15_000,
            concurrent_pairs: 2_000,
            conflicts: 1_000,
            malformed: 1_000,
            declines: 1_000,
            workers: 3,
            publish_rate: 55,
            fault_interval: Duration::from_secs(8),
            min_rounds: 10,
            settle_timeout: Duration::from_secs(900),
        }
    }
}

/// Everything a run starts, torn down when dropped.
struct World {
    /// The run's own PostgreSQL cluster (restarted and crashed by faults).
    pg: Arc<PgCluster>,
    /// The run's own RabbitMQ node (restarted by faults).
    rabbit: Arc<RabbitNode>,
    /// Proxy the workers reach PostgreSQL through (connection cuts).
    pg_proxy: Arc<TcpProxy>,
    /// Proxy the workers reach RabbitMQ through (connection cuts).
    amqp_proxy: Arc<TcpProxy>,
    /// The provider, in process, over real HTTP.
    sim: Simulator,
    /// Its base URL.
    sim_url: String,
    /// The provider's faults between bursts.
    baseline: Faults,
    /// Stops the simulator.
    sim_stop: CancellationToken,
    /// Direct (unproxied) pool for the checker.
    pool: PgPool,
    /// Database URL through the proxy, for the workers.
    db_via_proxy: String,
    /// Broker URL through the proxy, for the workers.
    amqp_via_proxy: String,
    /// The queue.
    queue: String,
    /// Where the workers' logs go.
    logs: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.sim_stop.cancel();
    }
}

const SCOPE: &str = "chaos";
const CHARGE_TIMEOUT_MS: u64 = 1000;
const LEASE_SECS: u64 = 3;

/// Run a profile end to end; the report lists any violated invariant.
pub async fn run(profile: Profile) -> anyhow::Result<Report> {
    init();
    let _alone = gate::alone().await;
    let started = Instant::now();
    let world = World::start().await?;
    tracing::info!(logs = %world.logs.display(), "chaos: world started");
    let plan = Plan::new(&profile);
    let mut workers = Workers::new(&world, profile.workers)?;
    workers.spawn_all()?;

    let publishing_done = CancellationToken::new();
    let scheduler = tokio::spawn(faults::schedule(
        faults::Targets::from(&world),
        workers.handle(),
        profile.fault_interval,
        profile.min_rounds,
        publishing_done.clone(),
    ));
    let progress = tokio::spawn(check::report_progress(
        world.pool.clone(),
        plan.expected.len(),
        started,
    ));
    let published = plan.publish(&world, &profile).await;
    publishing_done.cancel();
    // Faults keep coming until every kind has had its rounds.
    let injected = scheduler.await.context("fault scheduler")??;
    let (published, republished) = published?;
    world.sim.set_faults(Faults::default());
    workers.ensure_all_running()?;

    let mut duplicates = plan.duplicates.clone();
    duplicates.insert("producer re-publishes", republished);
    let mut report = Report {
        profile: profile.name,
        published,
        distinct: plan.expected.len(),
        duplicates,
        conflicts: profile.conflicts,
        malformed: profile.malformed,
        faults: injected.counts,
        frozen_leases: injected.frozen_leases,
        logs: world.logs.clone(),
        ..Report::default()
    };
    if let Err(e) = check::quiesce(&world, &plan, profile.settle_timeout).await {
        report.violations.push(format!("no quiescence: {e:#}"));
    }
    progress.abort();
    workers.stop_all().await;
    check::check(&world, &plan, &mut report).await?;
    report.fence_refusals = workers.count_in_logs("refused by the lease fence");
    report.overran = workers.count_in_logs("outlived its lease budget");
    if report.frozen_leases > 0 && report.fence_refusals == 0 {
        report.violations.push(format!(
            "frozen workers held {} leases, yet no stale result met the fence",
            report.frozen_leases
        ));
    }
    report.worker_restarts = workers.restarts();
    report.elapsed = started.elapsed();
    Ok(report)
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let pg = Arc::new(
            PgCluster::start()
                .await
                .context("starting the chaos PostgreSQL cluster")?,
        );
        let rabbit = Arc::new(
            RabbitNode::start()
                .await
                .context("starting the chaos RabbitMQ node")?,
        );
        let pg_proxy = Arc::new(TcpProxy::start(([127, 0, 0, 1], pg.port()).into()).await);
        let amqp_proxy = Arc::new(TcpProxy::start(([127, 0, 0, 1], rabbit.port()).into()).await);
        let db = "idem_chaos";
        let pool = idem_store::connect(&pg.url(db), 4).await?;
        idem_store::migrate(&pool).await?;
        let baseline = Faults {
            drop_request: 0.03,
            drop_response: 0.05,
            error_5xx: 0.03,
            latency_ms: 20,
            latency_jitter_ms: 80,
            ..Faults::default()
        };
        let sim = Simulator::new(baseline.clone());
        let (sim_url, sim_stop) = sim::serve(&sim).await?;
        let logs =
            std::env::temp_dir().join(format!("idem-chaos-logs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            db_via_proxy: format!("postgres://postgres@{}/{db}", pg_proxy.addr()),
            amqp_via_proxy: format!("amqp://guest:guest@{}/%2f", amqp_proxy.addr()),
            pg,
            rabbit,
            pg_proxy,
            amqp_proxy,
            sim,
            sim_url,
            baseline,
            sim_stop,
            pool,
            queue: "idem.chaos".into(),
            logs,
        })
    }
}
