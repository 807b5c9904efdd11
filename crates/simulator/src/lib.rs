//! # idem-simulator
//!
//! The provider simulator: the charge API of `docs/contracts.md` (section
//! "Charge API") over real HTTP, in memory, with fault injection. idem's tests,
//! demo and benchmark talk to it, and count charges at it
//! ([`Simulator::ledger`]) to prove "no double charge, no missing charge". It
//! shares the wire contract (`idem-charge-api`) with the client, never the
//! client itself.
//!
//! ## Layout
//! - `faults`: [`Faults`] (what goes wrong on purpose) and the per-request dice.
//! - `ledger`: [`Ledger`] (charges and refunds, as tests count them),
//!   [`Stats`] (exact counters) and [`SeenRequest`] (recent requests as
//!   received, with their `traceparent`).
//! - `answer`: an answer to send, or work reserved for after the latency.
//! - `state`: the provider's rules, synchronous, under one mutex: idempotency
//!   keys (in progress / replay / conflict), declines, lookup, listing, refunds.
//!   Its unit tests (`state_tests.rs`) include the golden `CreateCharge` body.
//! - `api`: the axum routes; faults and latency are applied here.
//! - `server`: the accept loop; one hyper HTTP/1 task per connection, so "no
//!   answer" is a real TCP reset of that connection only. [`Running`] is a
//!   background server for tests.
//! - `args`: [`SimArgs`] for `idem provider-sim`, and [`run`].
//! - `auth`: the API key ([`ApiKey`]) the `/v1` routes require when set.
//! - `tls`: the rustls server configuration for `https://`.
//!
//! ## Semantics worth knowing
//! - The dice are rolled for every `/v1` request (charges, lookups, listing,
//!   refunds); admin endpoints (`/_sim/...`, `/healthz`) are never faulted.
//! - Work that passed the dice and validation is finished in its own task after
//!   the latency, so it completes even if the client gives up: a client timeout
//!   shorter than the latency is an uncertain outcome, as with a real provider.

mod answer;
mod api;
mod args;
mod auth;
mod faults;
mod ledger;
mod server;
mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use args::{SimArgs, run};
pub use auth::ApiKey;
pub use faults::Faults;
pub use ledger::{Ledger, LedgerRefund, MAX_SEEN_REQUESTS, SeenRequest, Stats};
pub use server::Running;

use faults::Fate;
use state::State;

/// The simulated provider. Cheap to clone; clones share one state.
#[derive(Debug, Clone)]
pub struct Simulator {
    /// The shared state.
    inner: Arc<Mutex<State>>,
    /// When set, `/v1` requests must present it as a bearer token.
    api_key: Option<ApiKey>,
}

impl Simulator {
    /// A provider with these faults and an empty ledger.
    pub fn new(faults: Faults) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::new(faults))),
            api_key: None,
        }
    }

    /// Require `key` as `Authorization: Bearer <key>` on `/v1` requests
    /// (others get `401`, unprocessed); `None`: no check. Set before serving.
    #[must_use]
    pub fn with_api_key(mut self, key: Option<ApiKey>) -> Self {
        self.api_key = key;
        self
    }

    /// The routes, bound to this simulator. Served by anything but
    /// [`Simulator::serve`], a dropped answer hangs the request (120 s)
    /// instead of resetting the connection.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; open connections then
    /// get a bounded grace period.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        server::serve(self.router(), listener, None, shutdown).await
    }

    /// [`Simulator::serve`] over TLS (`https://`) with `config`
    /// (see [`tls::server_config`]).
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        server::serve(self.router(), listener, Some(acceptor), shutdown).await
    }

    /// Binds `addr` (port 0 for any free port) and serves in a background
    /// task until the returned handle is stopped or dropped.
    pub async fn spawn(&self, addr: SocketAddr) -> anyhow::Result<Running> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        Running::start(self.router(), listener).context("cannot read the bound address")
    }

    /// Replaces the faults; requests already under way keep the old ones.
    /// Callers should [`Faults::validate`] first.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// A copy of every charge and refund so far.
    pub fn ledger(&self) -> Ledger {
        self.lock().ledger()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// The most recent `/v1` requests as received (at most
    /// [`MAX_SEEN_REQUESTS`]), oldest first: what tests check trace context on.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().seen()
    }

    /// The state; never held across an await.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a `/v1` request and rolls its dice: the faults in force for it
    /// and what happens to it.
    fn enter(&self) -> (Faults, Fate) {
        let mut state = self.lock();
        let faults = state.faults.clone();
        let fate = faults.roll();
        let stats = &mut state.stats;
        stats.requests += 1;
        match fate {
            Fate::Normal => {}
            Fate::DropRequest => stats.dropped_requests += 1,
            Fate::DropResponse => stats.dropped_responses += 1,
            Fate::ServerError(_) => stats.errors_5xx += 1,
            Fate::RateLimited => stats.rate_limited += 1,
            Fate::Refused(_) => stats.refused += 1,
        }
        (faults, fate)
    }
}
