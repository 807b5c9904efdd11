//! The fault scheduler: every kind of fault, in a shuffled rotation, one every
//! interval, for at least a number of full rounds and as long as the producer
//! is still publishing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idem_simulator::{Faults, Simulator};
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use super::workers::Handle;
use super::world::{CHARGE_TIMEOUT_MS, LEASE_SECS, World};
use crate::pg::PgCluster;
use crate::proxy::TcpProxy;
use crate::rabbit::RabbitNode;

/// How long a burst of provider faults lasts.
const BURST: Duration = Duration::from_secs(2);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a random worker, start it again at once.
    WorkerKill,
    /// SIGSTOP a random worker for longer than its lease, then SIGCONT: its
    /// leases are rescued meanwhile, so its late results must be fenced off.
    WorkerFreeze,
    /// Reset every AMQP connection between the workers and the broker.
    AmqpCut,
    /// Reset every database connection between the workers and PostgreSQL
    /// (whatever they were doing: a commit, a claim, a settle).
    PgCut,
    /// Fast-mode restart of PostgreSQL.
    PgRestart,
    /// SIGKILL of every PostgreSQL process, then a start with crash recovery.
    PgCrash,
    /// Full restart of the RabbitMQ node.
    RabbitRestart,
    /// Half of the provider's requests dropped before processing, for a burst.
    ProviderDropRequests,
    /// Half of the provider's requests processed, answer dropped, for a burst.
    ProviderDropResponses,
    /// Half of the provider's answers a 5xx, for a burst.
    Provider5xx,
    /// Every provider answer slower than the client timeout, for a burst.
    ProviderSlow,
}

impl FaultKind {
    /// Every kind, in table order.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::WorkerKill,
        FaultKind::WorkerFreeze,
        FaultKind::AmqpCut,
        FaultKind::PgCut,
        FaultKind::PgRestart,
        FaultKind::PgCrash,
        FaultKind::RabbitRestart,
        FaultKind::ProviderDropRequests,
        FaultKind::ProviderDropResponses,
        FaultKind::Provider5xx,
        FaultKind::ProviderSlow,
    ];

    /// The name printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::WorkerKill => "worker SIGKILL + restart",
            FaultKind::WorkerFreeze => "worker SIGSTOP > lease, SIGCONT",
            FaultKind::AmqpCut => "AMQP connections cut",
            FaultKind::PgCut => "PostgreSQL connections cut",
            FaultKind::PgRestart => "PostgreSQL restart",
            FaultKind::PgCrash => "PostgreSQL crash (SIGKILL) + recovery",
            FaultKind::RabbitRestart => "RabbitMQ restart",
            FaultKind::ProviderDropRequests => "provider burst: requests dropped",
            FaultKind::ProviderDropResponses => "provider burst: responses dropped",
            FaultKind::Provider5xx => "provider burst: 5xx",
            FaultKind::ProviderSlow => "provider burst: slower than timeout",
        }
    }
}

/// What the scheduler can break.
pub struct Targets {
    /// The run's PostgreSQL cluster.
    pg: Arc<PgCluster>,
    /// The run's RabbitMQ node.
    rabbit: Arc<RabbitNode>,
    /// Proxy between the workers and PostgreSQL.
    pg_proxy: Arc<TcpProxy>,
    /// Proxy between the workers and RabbitMQ.
    amqp_proxy: Arc<TcpProxy>,
    /// The provider.
    sim: Simulator,
    /// The provider's faults between bursts.
    baseline: Faults,
    /// The workers' lease.
    lease: Duration,
    /// Direct pool on the run's database (to see who holds leases).
    pool: sqlx::PgPool,
}

impl From<&World> for Targets {
    fn from(world: &World) -> Self {
        Self {
            pg: Arc::clone(&world.pg),
            rabbit: Arc::clone(&world.rabbit),
            pg_proxy: Arc::clone(&world.pg_proxy),
            amqp_proxy: Arc::clone(&world.amqp_proxy),
            sim: world.sim.clone(),
            baseline: world.baseline.clone(),
            lease: Duration::from_secs(LEASE_SECS),
            pool: world.pool.clone(),
        }
    }
}

/// What the scheduler did.
#[derive(Debug, Default)]
pub struct Injected {
    /// Faults injected, by kind name.
    pub counts: BTreeMap<String, usize>,
    /// In-flight leases the frozen workers held when frozen (summed).
    pub frozen_leases: i64,
}

/// Inject faults in shuffled rounds of every kind, one per `interval`, until
/// `min_rounds` rounds are done and `publishing_done` is cancelled. Returns
/// what was injected. An error means the harness itself failed (a server
/// would not come back), not idem.
pub async fn schedule(
    targets: Targets,
    workers: Handle,
    interval: Duration,
    min_rounds: usize,
    publishing_done: CancellationToken,
) -> anyhow::Result<Injected> {
    let mut counts: BTreeMap<String, usize> = FaultKind::ALL
        .iter()
        .map(|k| (k.name().to_owned(), 0))
        .collect();
    let mut frozen_leases = 0;
    let mut rounds = 0;
    while rounds < min_rounds || !publishing_done.is_cancelled() {
        let mut kinds = FaultKind::ALL;
        kinds.shuffle(&mut rand::rng());
        for kind in kinds {
            tokio::time::sleep(interval).await;
            tracing::info!(fault = kind.name(), round = rounds, "chaos: injecting");
            frozen_leases += inject(kind, &targets, &workers)
                .await
                .with_context(|| format!("injecting {}", kind.name()))?;
            *counts.entry(kind.name().to_owned()).or_default() += 1;
        }
        rounds += 1;
    }
    Ok(Injected {
        counts,
        frozen_leases,
    })
}

/// Inject one fault and undo it (restart, thaw, restore) before returning.
/// Returns the rows it caught in flight, where that is known (a frozen
/// worker's leases).
async fn inject(kind: FaultKind, t: &Targets, workers: &Handle) -> anyhow::Result<i64> {
    match kind {
        FaultKind::WorkerKill => {
            workers.kill_random().await?;
        }
        FaultKind::WorkerFreeze => {
            // Slow the provider (still within the timeout) so calls pile up
            // in flight, then freeze the worker holding the most leases: its
            // rows must be rescued by the others, and its answers, arriving
            // while it sleeps, are stale when it wakes.
            let mut slow = t.baseline.clone();
            slow.latency_ms = CHARGE_TIMEOUT_MS * 7 / 10;
            t.sim.set_faults(slow);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let i = busiest(t, workers).await;
            let held = leases_of(t, &workers.replica_id(i)).await;
            workers.freeze(i)?;
            t.sim.set_faults(t.baseline.clone());
            tokio::time::sleep(t.lease * 2 + Duration::from_secs(1)).await;
            workers.thaw(i)?;
            return Ok(held);
        }
        FaultKind::AmqpCut => {
            t.amqp_proxy.cut_all();
        }
        FaultKind::PgCut => {
            t.pg_proxy.cut_all();
        }
        FaultKind::PgRestart => {
            t.pg.restart().await?;
        }
        FaultKind::PgCrash => {
            t.pg.kill_hard();
            tokio::time::sleep(Duration::from_millis(500)).await;
            t.pg.start_again().await?;
        }
        FaultKind::RabbitRestart => {
            t.rabbit.restart().await?;
        }
        FaultKind::ProviderDropRequests => {
            burst(t, |f| f.drop_request = 0.5).await;
        }
        FaultKind::ProviderDropResponses => {
            burst(t, |f| f.drop_response = 0.5).await;
        }
        FaultKind::Provider5xx => {
            burst(t, |f| f.error_5xx = 0.5).await;
        }
        FaultKind::ProviderSlow => {
            burst(t, |f| {
                f.latency_ms = CHARGE_TIMEOUT_MS + 500;
                f.latency_jitter_ms = 0;
            })
            .await;
        }
    }
    Ok(0)
}

/// The running worker with the most in-flight leases right now.
async fn busiest(t: &Targets, workers: &Handle) -> usize {
    let mut best = (0, -1);
    for i in workers.running() {
        let held = leases_of(t, &workers.replica_id(i)).await;
        if held > best.1 {
            best = (i, held);
        }
    }
    best.0
}

/// In-flight leases held by `owner` (0 if the database does not answer).
async fn leases_of(t: &Targets, owner: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_owner = $1")
        .bind(owner)
        .fetch_one(&t.pool)
        .await
        .unwrap_or(0)
}

/// The baseline faults changed by `change` for [`BURST`], then the baseline.
async fn burst(t: &Targets, change: impl FnOnce(&mut Faults)) {
    let mut faults = t.baseline.clone();
    change(&mut faults);
    t.sim.set_faults(faults);
    tokio::time::sleep(BURST).await;
    t.sim.set_faults(t.baseline.clone());
}
