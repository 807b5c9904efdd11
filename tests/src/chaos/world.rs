//! The chaos run's world: its profile, and everything a run starts (its own
//! PostgreSQL cluster and RabbitMQ node, proxies in front of both, the
//! provider), torn down when dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idem_simulator::{Faults, Simulator};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::pg::PgCluster;
use crate::proxy::TcpProxy;
use crate::rabbit::RabbitNode;
use crate::sim;

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
pub(super) struct World {
    /// The run's own PostgreSQL cluster (restarted and crashed by faults).
    pub(super) pg: Arc<PgCluster>,
    /// The run's own RabbitMQ node (restarted by faults).
    pub(super) rabbit: Arc<RabbitNode>,
    /// Proxy the workers reach PostgreSQL through (connection cuts).
    pub(super) pg_proxy: Arc<TcpProxy>,
    /// Proxy the workers reach RabbitMQ through (connection cuts).
    pub(super) amqp_proxy: Arc<TcpProxy>,
    /// The provider, in process, over real HTTP.
    pub(super) sim: Simulator,
    /// Its base URL.
    pub(super) sim_url: String,
    /// The provider's faults between bursts.
    pub(super) baseline: Faults,
    /// Stops the simulator.
    pub(super) sim_stop: CancellationToken,
    /// Direct (unproxied) pool for the checker.
    pub(super) pool: PgPool,
    /// Database URL through the proxy, for the workers.
    pub(super) db_via_proxy: String,
    /// Broker URL through the proxy, for the workers.
    pub(super) amqp_via_proxy: String,
    /// The queue.
    pub(super) queue: String,
    /// Where the workers' logs go.
    pub(super) logs: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.sim_stop.cancel();
    }
}

pub(super) const SCOPE: &str = "chaos";
pub(super) const CHARGE_TIMEOUT_MS: u64 = 1000;
pub(super) const LEASE_SECS: u64 = 3;

impl World {
    pub(super) async fn start() -> anyhow::Result<Self> {
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
