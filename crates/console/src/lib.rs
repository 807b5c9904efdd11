//! # idem-console
//!
//! The operator console: server-rendered pages over the store's operator
//! reads and audited changes, the same ones the CLI makes (`idem outbox
//! retry|resolve`, `idem quarantine replay`, bulk retry by filter). Served
//! by `idem console` on its own listener, or by `idem run --console` under
//! `/console` on the replica's HTTP listener. No script runs in the pages:
//! links, forms and inline SVG, so there is no build step and nothing to
//! load from elsewhere (the Content-Security-Policy forbids it).
//!
//! Every page costs O(what it shows): lists are keyset pages
//! (`idem_store::admin::page`), the overview reads open work through partial
//! indexes and the history only as estimates or bounded windows.
//!
//! ## Layout
//! - `settings`: what the console is started with, validated (a listener
//!   off loopback needs a token), and the token that never prints.
//! - `guard`: who may ask (token or session cookie; the `Host` on loopback,
//!   against DNS rebinding), read-only mode, CSRF values, response headers.
//! - `view`: the pages' shared frame, errors as pages, formatting.
//! - `overview`: counts per state with trends, rates, lag, replicas'
//!   breakers, the last reconciliation, quarantine and conflicts.
//! - `trend`: the console's own ring of samples behind the overview's trends.
//! - `replicas`: each configured replica's `/metrics`, read for its breaker,
//!   broker session and publish lag histogram.
//! - `lag`: a minute of the replicas' lag histograms, and the quantiles of
//!   what changed in it.
//! - `outbox`: the outbox list with filters, one row with everything around
//!   it, retry and resolve.
//! - `bulk`: retry by filter — the preview that counts, then the audited run.
//! - `quarantine`: kept messages (raw bytes shown escaped) and replay.
//! - `inbox`: key conflicts, and a key beside the payloads that conflicted.
//! - `audit`: the audit trail.

mod audit;
mod bulk;
mod guard;
mod inbox;
mod lag;
mod outbox;
mod overview;
mod quarantine;
mod replicas;
mod settings;
mod trend;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{any, get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::{BadSettings, Replay, Settings, Token};

/// Where the console's pages live, on its own listener or a replica's.
pub const BASE: &str = "/console";

/// A console: its database, settings and the samples of its trends. Cheap
/// to clone (shared state).
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reads and the operators' changes.
    pool: PgPool,
    /// As started.
    settings: Settings,
    /// The session and CSRF values' keys.
    keys: guard::Keys,
    /// The overview's trends.
    trend: trend::Trend,
    /// The replicas' recent lag histograms.
    lag: lag::Readings,
    /// Held while the replicas are read.
    reading: tokio::sync::Mutex<()>,
    /// Reads the replicas' `/metrics`.
    http: reqwest::Client,
}

impl Console {
    /// A console over `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        let keys = guard::Keys::new(settings.token.as_ref());
        let http = replicas::client()?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                keys,
                trend: trend::Trend::default(),
                lag: lag::Readings::default(),
                reading: tokio::sync::Mutex::new(()),
                http,
            }),
        })
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Read every configured replica, keeping their lag histograms. One
    /// read at a time (the trends' tick and the pages'), so that an older
    /// scrape is never kept after a newer one (it would look like a
    /// restart).
    async fn read_replicas(&self) -> Vec<replicas::Replica> {
        let _one = self.inner.reading.lock().await;
        let read = replicas::read_all(&self.inner.http, &self.settings().replicas).await;
        let at = std::time::Instant::now();
        for r in &read {
            if let Some(h) = &r.lag {
                self.inner.lag.push(&r.url, at, h.clone());
            }
        }
        read
    }

    /// The console's routes under [`BASE`], guarded. Mount it on any router.
    pub fn router(&self) -> Router {
        // Full paths rather than `nest`: the guard and the pages see the
        // path as the browser sent it, on either listener.
        let at = |p: &str| format!("{BASE}{p}");
        Router::new()
            .route(&at("/"), get(overview::page))
            .route(BASE, get(|| async { Redirect::to(&format!("{BASE}/")) }))
            .route(&at("/style.css"), get(view::style))
            .route(&at("/login"), get(guard::login_page).post(guard::login))
            .route(&at("/outbox"), get(outbox::list))
            .route(&at("/outbox/{id}"), get(outbox::row))
            .route(&at("/outbox/{id}/retry"), post(outbox::retry))
            .route(&at("/outbox/{id}/resolve"), post(outbox::resolve))
            .route(&at("/retry"), get(bulk::preview).post(bulk::run))
            .route(&at("/quarantine"), get(quarantine::list))
            .route(&at("/quarantine/{id}"), get(quarantine::row))
            .route(&at("/quarantine/{id}/replay"), post(quarantine::replay))
            .route(&at("/conflicts"), get(inbox::conflicts))
            .route(&at("/inbox"), get(inbox::key))
            .route(&at("/audit"), get(audit::list))
            .route(&at("/{*rest}"), any(view::not_found))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::guard,
            ))
            .with_state(self.clone())
    }

    /// Keep the overview's trends and the replicas' lag readings: a sample
    /// every [`trend::PERIOD`] until `shutdown`. Spawn it beside the listener.
    pub async fn keep_trends(self, shutdown: CancellationToken) {
        trend::keep(self, shutdown).await;
    }
}

/// Serve `console` on `listener` (`idem console`): its pages, `/` sending
/// to them, until `shutdown`; the trends are sampled meanwhile.
pub async fn serve(
    listener: TcpListener,
    console: Console,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = console
        .router()
        .route("/", get(|| async { Redirect::to(&format!("{BASE}/")) }));
    let trends = tokio::spawn(console.keep_trends(shutdown.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    trends.abort();
    Ok(served?)
}
