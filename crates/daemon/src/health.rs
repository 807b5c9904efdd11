//! The health listener:
//! - `/healthz`: the process answers (liveness); always `200 ok`.
//! - `/readyz`: `200 ready` only when the database answers a query within 2 s
//!   and, on a replica that runs the inbox consumer, the consumer has a live
//!   broker session (not while connecting or reconnecting) and can record
//!   its batches (not while the database refuses them: read-only, out of
//!   connections, shutting down) and, on a replica that dispatches, its
//!   provider breaker is closed (else e.g. `provider breaker open: 401 from
//!   POST /v1/charges`); otherwise `503` with one line per reason.
//! - `/metrics`: the Prometheus text exposition (see [`crate::metrics`]).
//! - `/console/...` with `idem run --console`: the operator console
//!   (`idem_console`), guarded by its own token; until the database answers
//!   it says so with a 503 (the console needs the database for every page).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use idem_dispatch::Breaker;
use idem_inbox::consumer::BrokerStatus;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the health endpoints look at.
#[derive(Debug, Clone)]
pub struct Health {
    /// The database, pinged by `/readyz`; empty while the replica waits for
    /// it at start (the endpoints answer meanwhile: alive, not ready).
    pub pool: Arc<OnceLock<PgPool>>,
    /// The consumer's broker session; `None` on a replica without the
    /// consumer role (then the broker is not part of readiness).
    pub broker: Option<BrokerStatus>,
    /// The dispatcher's provider breaker; `None` on a replica without the
    /// dispatcher role.
    pub breaker: Option<Breaker>,
    /// The Prometheus recorder, rendered by `/metrics`.
    pub metrics: PrometheusHandle,
    /// The console's routes, set once the database answers; `None` on a
    /// replica without `--console`.
    pub console: Option<Arc<OnceLock<Router>>>,
}

/// Serve the health and metrics endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/console", any(console))
        // A wildcard matches no empty rest: the overview needs its own route.
        .route("/console/", any(console))
        .route("/console/{*rest}", any(console))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Why the pool cannot hand out a connection: the pool retries refused
/// connections silently until its timeout and then says only that it timed
/// out, so one connection is opened here, with the pool's own options, to
/// hear the server's answer (too many connections, a refused password, a
/// server starting up…). `None` if that connection works or hangs.
async fn why_no_connection(pool: &sqlx::PgPool) -> Option<String> {
    let options = pool.connect_options();
    let attempt = sqlx::ConnectOptions::connect(&*options);
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Err(e)) => Some(e.to_string().chars().take(300).collect()),
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            None
        }
        Err(_) => None,
    }
}

async fn ready(State(health): State<Health>) -> (StatusCode, String) {
    let mut down: Vec<String> = Vec::new();
    match health.pool.get() {
        None => down.push("database: waiting for it at start".to_owned()),
        Some(pool) => {
            let ping = sqlx::query("SELECT 1").execute(pool);
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if !matches!(e, sqlx::Error::PoolTimedOut) => {
                    down.push(format!("database unreachable: {e}"));
                }
                _ => down.push(match why_no_connection(pool).await {
                    Some(why) => format!("database unreachable: {why}"),
                    None => "database unreachable".to_owned(),
                }),
            }
        }
    }
    if let Some(broker) = &health.broker {
        if !broker.is_connected() {
            down.push("broker session down (consumer connecting or reconnecting)".to_owned());
        }
        if let Some(why) = broker.stalled() {
            down.push(format!("inbox cannot record its batch: {why}"));
        }
    }
    if let Some(open) = health.breaker.as_ref().and_then(Breaker::status) {
        down.push(open);
    }
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let mut body = String::from("not ready\n");
        for reason in down {
            body.push_str(&reason);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn console(State(health): State<Health>, request: Request) -> Response {
    let Some(cell) = &health.console else {
        return (
            StatusCode::NOT_FOUND,
            "the console is off on this replica (IDEM_CONSOLE)\n",
        )
            .into_response();
    };
    match cell.get() {
        // `Router`'s error type is `Infallible`.
        Some(router) => match tower::ServiceExt::oneshot(router.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the console starts once the database answers\n",
        )
            .into_response(),
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    // Histogram samples are folded into their buckets by the upkeep; do it
    // now so a scrape sees every observation made so far.
    health.metrics.run_upkeep();
    // The process metrics are read from the OS now, so they are the scrape's.
    crate::metrics::collect_process();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.metrics.render(),
    )
}
