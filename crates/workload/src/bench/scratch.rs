//! The scratch world of one measurement: a fresh database
//! (`idem_bench_<random>` on the given server, schema applied, dropped after)
//! and a fresh queue, and the provider simulator on a runtime of its own.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::Context;
use idem_simulator::{Faults, Simulator};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use super::cpu::SIMULATOR_THREADS;
use crate::scratch::{delete_queue, fresh_database, fresh_queue};

/// A fresh database and queue; [`Scratch::drop_all`] removes both.
pub struct Scratch {
    /// Random part of the names, also the message id prefix.
    pub id: String,
    /// URL of the fresh database.
    pub database_url: String,
    /// Pool on it (schema applied).
    pub pool: PgPool,
    /// The fresh queue (declared, with its dead-letter queue).
    pub queue: String,
    /// Broker URL.
    pub amqp_url: String,
    /// Whether the queue was declared (and is to be deleted).
    declared: bool,
    /// The server process of the emulated autovacuum's connection, once it
    /// has one (0: none yet): its CPU is reported apart ([`Self::upkeep_pid`]).
    upkeep_pid: Arc<AtomicI32>,
}

impl Scratch {
    /// Create the database on the server of `server_url` and, if `declare`,
    /// the queue on the broker of `amqp_url`.
    pub async fn create(server_url: &str, amqp_url: &str, declare: bool) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let name = format!("idem_bench_{id}");
        PgConnectOptions::from_str(server_url).with_context(|| {
            format!("bad --database-url {}", idem_store::redact_url(server_url))
        })?;
        let mut url = url::Url::parse(server_url).context("bad --database-url")?;
        url.set_path(&format!("/{name}"));
        let database_url = url.to_string();
        let pool = fresh_database(&database_url).await?;
        let queue = format!("idem.bench.{id}");
        if declare {
            fresh_queue(amqp_url, &queue).await?;
        }
        Ok(Self {
            id,
            database_url,
            pool,
            queue,
            amqp_url: amqp_url.to_owned(),
            declared: declare,
            upkeep_pid: Arc::new(AtomicI32::new(0)),
        })
    }

    /// Autovacuum, emulated for a server that runs without it (this
    /// machine's runs with `autovacuum = off`): every `every` (never when
    /// zero), `VACUUM (ANALYZE)` each table of the bench database whose dead
    /// rows exceed autovacuum's vacuum thresholds, and `ANALYZE` each whose
    /// changed rows exceed its analyze thresholds (the table's own settings
    /// or the server's), until the returned token is cancelled. Without it,
    /// the tables each message inserts into and deletes from (result events,
    /// account slots) and the outbox's indexes fill with dead rows, every
    /// scan slows down as the run goes on, and the planner keeps statistics
    /// from whenever the outbox was last vacuumed.
    pub fn vacuum_every(&self, every: Duration) -> CancellationToken {
        let stop = CancellationToken::new();
        if every.is_zero() {
            return stop;
        }
        let (pool, token) = (self.pool.clone(), stop.clone());
        let upkeep_pid = self.upkeep_pid.clone();
        tokio::spawn(async move {
            // One connection for the whole run, so that one server process
            // does all of the upkeep and its CPU can be told apart from the
            // pipeline's; a new one (and pid) only after an error.
            let mut held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let vacuumed = async {
                    let conn = match held.as_mut() {
                        Some(conn) => conn,
                        None => {
                            let mut conn = pool.acquire().await?;
                            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                                .fetch_one(&mut *conn)
                                .await?;
                            upkeep_pid.store(pid, Ordering::Relaxed);
                            held.insert(conn)
                        }
                    };
                    for due in idem_store::bench::due_for_upkeep(conn).await? {
                        idem_store::bench::upkeep(conn, &due).await?;
                    }
                    Ok::<_, sqlx::Error>(())
                };
                if let Err(e) = vacuumed.await {
                    tracing::warn!(error = %e, "bench vacuum failed");
                    held = None;
                }
            }
        });
        stop
    }

    /// The server process doing the emulated autovacuum's work, once it
    /// started ([`Self::vacuum_every`]).
    pub fn upkeep_pid(&self) -> Option<i32> {
        Some(self.upkeep_pid.load(Ordering::Relaxed)).filter(|&pid| pid > 0)
    }

    /// Pre-load `rows` settled outbox rows (history), if any.
    pub async fn preload(&self, rows: i64) -> anyhow::Result<()> {
        if rows == 0 {
            return Ok(());
        }
        eprintln!("  loading {rows} settled outbox rows");
        let mut conn = self.pool.acquire().await?;
        idem_store::bench::load_backlog(&mut conn, "backlog", rows, true)
            .await
            .context("loading the backlog")?;
        idem_store::bench::vacuum_outbox(&mut conn).await?;
        Ok(())
    }

    /// The database's name.
    pub fn database(&self) -> String {
        format!("idem_bench_{}", self.id)
    }

    /// Drop the queue and the database (best effort: a failure is reported,
    /// not fatal — the names are unique).
    pub async fn drop_all(self) {
        self.pool.close().await;
        if self.declared
            && let Err(e) = delete_queue(&self.amqp_url, &self.queue).await
        {
            tracing::warn!(error = %e, queue = %self.queue, "could not delete the bench queue");
        }
        if let Err(e) = idem_store::scratch::drop_database(&self.database_url).await {
            tracing::warn!(error = %e, id = %self.id, "could not drop the bench database");
        }
    }
}

/// The provider simulator, served from a runtime of its own (one thread,
/// named for the CPU accounting) on a free port.
pub struct Provider {
    /// The simulator, for its ledger and counters.
    pub sim: Simulator,
    /// Its base URL.
    pub url: String,
    /// Stops serving.
    stop: CancellationToken,
    /// Its runtime.
    runtime: Runtime,
}

impl Provider {
    /// Start a simulator with `latency_ms` and no other fault.
    pub fn start(latency_ms: u64) -> anyhow::Result<Self> {
        Self::with_faults(Faults {
            latency_ms,
            ..Faults::default()
        })
    }

    /// Start a simulator with `faults`.
    pub fn with_faults(faults: Faults) -> anyhow::Result<Self> {
        let sim = Simulator::new(faults);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(SIMULATOR_THREADS)
            .enable_all()
            .build()
            .context("starting the simulator's runtime")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let (s, token) = (sim.clone(), stop.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            s.serve(listener, async move { token.cancelled().await })
                .await
        });
        Ok(Self {
            sim,
            url,
            stop,
            runtime,
        })
    }

    /// Stop serving and let the runtime go (without blocking the caller's).
    pub fn stop(self) {
        self.stop.cancel();
        self.runtime.shutdown_background();
    }
}
