//! # idem-tests
//!
//! Shared harness of the end-to-end suites: each test gets its own PostgreSQL
//! database, its own RabbitMQ queue and its own provider simulator on a free
//! port, and drives the real `idem` code (in-process, or the built binary for
//! the crash tests). Charges are always counted at the simulator.
//!
//! ## Layout
//! - [`TestEnv`]: the isolated world of one test, and what a test does with it
//!   (publish, start workers, wait, count).

#![allow(clippy::unwrap_used)]

pub mod chaos;
pub mod cluster;
pub mod proxy;
pub mod publisher;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use idem::RunArgs;
use idem::workload::{self, Outgoing};
use idem_simulator::{Faults, Simulator};
use idem_store::status::Status;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Local PostgreSQL (the shared service), admin database.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Local RabbitMQ (the shared service).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
#[command(args_override_self = true)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// One test's isolated world.
pub struct TestEnv {
    /// Unique name of this test's database and queue.
    pub name: String,
    /// This test's database.
    pub database_url: String,
    /// Pool on this test's database (schema applied).
    pub pool: PgPool,
    /// This test's queue.
    pub queue: String,
    /// The provider simulator.
    pub sim: Simulator,
    /// Its base URL.
    pub sim_url: String,
    /// Stops the simulator when the env is dropped.
    sim_stop: CancellationToken,
    /// Publishing connection and channel (confirms on).
    amqp: (Connection, Channel),
}

/// A worker running in-process (`idem::daemon::run`).
pub struct Worker {
    /// Cancel to shut down gracefully.
    pub shutdown: CancellationToken,
    /// The daemon's result.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Graceful stop; returns the daemon's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await?
    }
}

/// Logging for tests (`RUST_LOG` to see it) and the crypto provider.
pub fn init() {
    idem::telemetry::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_test_writer()
        .try_init();
}

impl TestEnv {
    /// A fresh database, queue and simulator with `faults`.
    pub async fn new(faults: Faults) -> Self {
        init();
        let name = format!("idem_t_{}", Uuid::new_v4().simple());
        let database_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = idem_store::connect(&database_url, 8).await.unwrap();
        idem_store::migrate(&pool).await.unwrap();
        let queue = name.replace('_', ".");
        let sim = Simulator::new(faults);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_url = format!("http://{}", listener.local_addr().unwrap());
        let sim_stop = CancellationToken::new();
        let (s, stop) = (sim.clone(), sim_stop.clone());
        tokio::spawn(async move {
            s.serve(listener, async move { stop.cancelled().await })
                .await
        });
        let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        idem_inbox::declare(&channel, &idem_inbox::Topology::for_queue(&queue))
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            name,
            database_url,
            pool,
            queue,
            sim,
            sim_url,
            sim_stop,
            amqp: (connection, channel),
        }
    }

    /// `idem run` arguments for this env with fast test timings, plus `extra`
    /// flags (later flags win).
    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        let mut argv: Vec<String> = vec!["idem".into()];
        argv.extend(
            self.run_flags()
                .into_iter()
                .chain(extra.iter().map(|s| s.to_string())),
        );
        RunCli::try_parse_from(argv).unwrap().run
    }

    /// The flags of [`TestEnv::run_args`], for a child process.
    pub fn run_flags(&self) -> Vec<String> {
        [
            "--database-url",
            &self.database_url,
            "--amqp-url",
            AMQP_URL,
            "--queue",
            &self.queue,
            "--charge-api-url",
            &self.sim_url,
            "--http-addr",
            "127.0.0.1:0",
            "--lease-secs",
            "3",
            "--charge-timeout-ms",
            "400",
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "300",
            "--idle-poll-ms",
            "10",
            "--db-max-connections",
            "6",
            "--shutdown-grace-secs",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Start an in-process worker with `extra` flags.
    pub fn start_worker(&self, extra: &[&str]) -> Worker {
        let config = self.run_args(extra).validate().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(idem::daemon::run(config, shutdown.clone()));
        Worker { shutdown, handle }
    }

    /// Publish generated messages (confirmed).
    pub async fn publish(&self, messages: &[Outgoing]) {
        workload::publish(&self.amqp.1, &self.queue, messages, 0, |_| {})
            .await
            .unwrap();
    }

    /// Publish one raw message (confirmed).
    pub async fn publish_raw(&self, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .amqp
            .1
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Counts of this env's tables.
    pub async fn status(&self) -> Status {
        idem_store::status::read(&mut self.pool.acquire().await.unwrap())
            .await
            .unwrap()
    }

    /// Charges at the provider per reference id (gross, not net of refunds).
    pub fn charges_by_reference(&self) -> BTreeMap<String, usize> {
        self.sim.ledger().gross_by_reference()
    }

    /// Messages waiting in this env's queue (not counting unacked ones).
    pub async fn queue_depth(&self) -> u32 {
        let q = self
            .amqp
            .1
            .queue_declare(
                self.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Drop the database and queue (best effort).
    pub async fn cleanup(self) {
        self.sim_stop.cancel();
        let topology = idem_inbox::Topology::for_queue(&self.queue);
        for q in [&topology.queue, &topology.dead_letter_queue] {
            let _ = self
                .amqp
                .1
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.amqp.0.close(200, "done".into()).await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(PG_ADMIN_URL).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
        }
    }
}

/// A workload spec of `distinct` originals with this env's unique prefix.
pub fn spec(prefix: &str, distinct: usize) -> workload::Spec {
    workload::Spec {
        prefix: prefix.to_owned(),
        scope: None,
        distinct,
        duplicates: 0,
        conflicts: 0,
        malformed: 0,
        seed: 1,
    }
}

/// Poll `check` every 50 ms until it returns true; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The built `idem` binary (cargo builds it for `cargo test --workspace`,
/// because the `idem` package has integration tests of its own), or
/// `$IDEM_BIN` when set — a copy kept aside, so a long run is not changed
/// under its feet by a rebuild.
pub fn idem_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("IDEM_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("idem");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p idem` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}
