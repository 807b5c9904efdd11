//! One replica (`idem run`). Serves its health endpoints, waits for the
//! database while it is away (failing fast with a clear message only on what
//! waiting cannot fix: a setting, credentials, a certificate), applies the schema, then runs
//! the inbox consumer and/or the dispatcher until the shutdown token fires.
//! Alongside them: the health and metrics listener, the sampler of the
//! table gauges, and the retention job; with the dispatcher, the result
//! publisher.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use idem_dispatch::Dispatcher;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::health::{self, Health};
use crate::metrics;

/// Connections a dispatcher opens besides the shared pool (docs/scaling.md,
/// Connections).
const DISPATCH_CONNECTIONS: u32 = 2;

/// Run the daemon until `shutdown` is cancelled; returns once every role has
/// stopped gracefully (consumer: batch in hand committed and acked, the rest
/// left to the broker; dispatcher: calls in flight finished or left to the
/// lease rescuer). A fatal start-up problem is returned as an error.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], calling `on_listening` with the health listener's bound address
/// once it listens (before the roles start) — how a caller that asked for
/// port 0 learns the port.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> anyhow::Result<()> {
    let metrics_handle = metrics::install()?;
    let client = config.charge_client()?;
    let listener = TcpListener::bind(config.http_addr).await.with_context(|| {
        format!(
            "cannot listen on IDEM_HTTP_ADDR {}: is another process using it? pick another address or port 0",
            config.http_addr
        )
    })?;
    let http_addr = listener.local_addr()?;
    tracing::info!(replica = %config.dispatch.owner, role = ?config.role, %http_addr, thread_stack_bytes = idem_inbox::stack::current(), "idem starting");
    on_listening(http_addr);
    let consumes = matches!(config.role, Role::All | Role::Consumer);
    let broker = idem_inbox::consumer::BrokerStatus::new();
    // The inbox raises it after committing new rows; the dispatcher claims then.
    let new_work = broker.new_work();
    let dispatches = matches!(config.role, Role::All | Role::Dispatcher);
    let breaker = idem_dispatch::Breaker::new(config.dispatch.breaker);

    // Any role failing for good stops the others: a replica is whole or absent.
    let stop = shutdown.child_token();
    let mut roles = tokio::task::JoinSet::new();
    // Health first: while the replica waits for its database it is alive
    // and says why it is not ready.
    let database = Arc::new(OnceLock::new());
    let health = Health {
        pool: database.clone(),
        broker: consumes.then(|| broker.clone()),
        breaker: dispatches.then(|| breaker.clone()),
        metrics: metrics_handle.clone(),
        console: config.console.is_some().then(|| Arc::new(OnceLock::new())),
    };
    let console_cell = health.console.clone();
    roles.spawn(health::serve(listener, health, stop.clone()));
    let Some(pool) = wait_for_database(&config, &shutdown).await? else {
        stop.cancel();
        while roles.join_next().await.is_some() {}
        return Ok(());
    };
    let _ = database.set(pool.clone());
    // The pools of single roles (console, dispatcher), closed with the
    // shared one: a pool's connections, and with several hosts its
    // follower, live until it is closed.
    let mut own_pools: Vec<sqlx::PgPool> = Vec::new();
    if let (Some(settings), Some(cell)) = (config.console.clone(), console_cell) {
        // Its own small pool: pages and bulk retries never take the
        // connections the pipeline's roles need.
        let console_pool = idem_store::connect(config.database_url.expose(), 2).await?;
        own_pools.push(console_pool.clone());
        let console =
            idem_console::Console::new(console_pool, settings.with_own_replica(http_addr))?;
        let _ = cell.set(console.router());
        let trend_stop = stop.clone();
        roles.spawn(async move {
            console.keep_trends(trend_stop).await;
            Ok(())
        });
        tracing::info!(%http_addr, "operator console at /console");
    }
    roles.spawn(metrics::sample_tables(
        pool.clone(),
        metrics_handle,
        stop.clone(),
    ));
    // Every replica, whatever its role: the tables stay bounded while any
    // replica is up; an advisory lock lets one of them do the work.
    roles.spawn(idem_retention::run(
        pool.clone(),
        config.retention.clone(),
        stop.clone(),
    ));
    if consumes {
        // Whatever the broker dead-lettered is decided like any delivery.
        let drain = idem_inbox::drain::DeadLetterDrain {
            pool: pool.clone(),
            amqp_url: config.inbox.amqp_url.clone(),
            queue: idem_inbox::Topology::for_queue(&config.inbox.queue).dead_letter_queue,
            admission: config.inbox.admission.clone(),
            memory_budget: config.inbox.prefetch_bytes,
        };
        let every =
            idem_periodic::Every::new(config.dead_letter_drain).starting(idem_periodic::Start::Now);
        let drain_stop = stop.clone();
        roles.spawn(async move {
            idem_periodic::run(drain, every, drain_stop).await;
            Ok(())
        });
        let (pool, inbox, stop) = (pool.clone(), config.inbox.clone(), stop.clone());
        roles.spawn(async move {
            idem_inbox::consumer::run_reporting(pool, inbox, stop, broker)
                .await
                .context("inbox consumer")
        });
    }
    if let (Some(interval), Role::All | Role::Dispatcher) = (config.reconcile.interval, config.role)
    {
        let reconciler = idem_reconcile::Reconciler::new(
            pool.clone(),
            client.clone(),
            config.reconcile.reconciler.clone(),
        );
        roles.spawn(idem_reconcile::run_periodic(
            reconciler,
            interval,
            config.reconcile.lookback,
            stop.clone(),
        ));
    }
    if matches!(config.role, Role::All | Role::Dispatcher) {
        // Result events: settles write them (a trigger), this replica sends
        // them. Rides out broker outages by itself; results wait in the database.
        let publisher = idem_events::Publisher::new(pool.clone(), config.results.clone());
        let publisher_stop = stop.clone();
        roles.spawn(async move {
            publisher
                .run(publisher_stop)
                .await
                .context("result publisher")
        });
        // Two connections of its own, for the claim and the result
        // recorder (one statement at a time each), planned once per
        // connection: `idem_store::db::DISPATCH_SESSION`.
        let dispatch_pool =
            idem_store::connect_dispatch(config.database_url.expose(), DISPATCH_CONNECTIONS)
                .await?;
        own_pools.push(dispatch_pool.clone());
        let dispatcher = Dispatcher::new(pool.clone(), client, config.dispatch.clone())
            .with_breaker(breaker)
            .with_new_work(new_work)
            .with_dispatch_pool(dispatch_pool);
        let stop = stop.clone();
        roles.spawn(async move { dispatcher.run(stop).await.context("dispatcher") });
    }

    let mut outcome = Ok(());
    while let Some(joined) = roles.join_next().await {
        let result = joined.context("a role panicked").and_then(|r| r);
        if let Err(e) = result {
            if outcome.is_ok() {
                outcome = Err(e);
            }
            stop.cancel();
        } else if !stop.is_cancelled() {
            // A role ended by itself without shutdown: stop the replica.
            stop.cancel();
        }
    }
    for own in own_pools {
        own.close().await;
    }
    pool.close().await;
    if outcome.is_ok() {
        tracing::info!("idem stopped");
    }
    outcome
}

/// The first and longest wait between two tries at the database at start.
const DATABASE_WAIT_MIN: Duration = Duration::from_millis(500);
const DATABASE_WAIT_MAX: Duration = Duration::from_secs(15);

/// Connect and migrate, waiting with jittered backoff while the database is
/// away (restarting, failing over, refusing connections for now); fail at
/// once on what waiting cannot fix (credentials, an unknown host, a
/// certificate, a URL or a migration that is wrong). `None`: shutdown came
/// first.
async fn wait_for_database(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<sqlx::PgPool>> {
    let mut backoff = idem_periodic::Backoff::new(DATABASE_WAIT_MIN, DATABASE_WAIT_MAX);
    loop {
        let attempt = async {
            let pool = idem_store::connect(&config.database_url, config.db_max_connections).await?;
            idem_store::migrate(&pool).await?;
            anyhow::Ok(pool)
        };
        match attempt.await {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) if idem_store::outage::waiting_helps(&e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "the database is not available yet; waiting for it (not ready meanwhile)");
                if !idem_periodic::pause(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
