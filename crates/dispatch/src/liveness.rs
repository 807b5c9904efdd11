//! The replica's liveness lock: a session-level advisory lock under a random
//! key, held on a connection of its own for as long as the replica runs. A
//! claim stores the key on the rows it leases (`outbox.lease_lock`); when the
//! replica dies (SIGKILL, crash, OOM, a cut connection) PostgreSQL releases
//! the lock with the session, and the other replicas' rescuers put its rows
//! back in play within a second or two instead of after the whole lease
//! (`crate::rescue`). A paused replica (SIGSTOP, a long GC-like stall) keeps
//! its session, so its lock holds and its rows wait for the lease as before:
//! the fence is unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem_periodic::Backoff;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How often the lock's connection is checked: a lost connection is noticed
/// within this, and claims stop carrying the key meanwhile.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The lock's key and whether this replica holds it now.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    key: i64,
    held: Arc<AtomicBool>,
}

impl Liveness {
    /// A new random key (a collision with another replica's would only make
    /// one of them fall back to the lease expiry).
    pub(crate) fn new() -> Self {
        Self {
            key: rand::random::<i64>() & i64::MAX,
            held: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The key to store on claimed rows: `None` while the lock is not held
    /// (not yet taken, or its connection lost), so that rows claimed then are
    /// left to the lease expiry rather than rescued while their holder lives.
    pub(crate) fn key(&self) -> Option<i64> {
        self.held.load(Ordering::Acquire).then_some(self.key)
    }

    fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Release);
        ::metrics::gauge!(metrics::LIVENESS_HELD).set(if held { 1.0 } else { 0.0 });
    }

    /// Take the lock and keep it until `shutdown`, taking it again after the
    /// connection is lost (the database restarted, failed over, or cut us).
    pub(crate) async fn hold(&self, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        while !shutdown.is_cancelled() {
            match self.hold_once(&pool, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    self.set_held(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "liveness lock lost; rows claimed meanwhile wait for their lease");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.set_held(false);
    }

    /// One session: a pool connection taken out of the pool (so it is never
    /// recycled while it holds the lock), the lock, then a check every
    /// [`CHECK_EVERY`] until shutdown (`Ok`) or the connection fails, answers
    /// too slowly, or is no longer on a primary (`Err`: after a failover the
    /// lock must be held where the claims are made).
    async fn hold_once(&self, pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            conn = pool.acquire() => conn?.detach(),
        };
        if !idem_store::rescue::hold_liveness(&mut conn, self.key).await? {
            anyhow::bail!("another session holds liveness key {}", self.key);
        }
        self.set_held(true);
        tracing::debug!(key = self.key, "liveness lock held");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Closing the session releases the lock; the rows this
                    // replica still holds are finished or left to the rescue.
                    self.set_held(false);
                    let _ = sqlx::Connection::close(conn).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let check = idem_store::targets::in_recovery(&mut conn);
            let recovering = tokio::select! {
                _ = shutdown.cancelled() => continue,
                checked = tokio::time::timeout(CHECK_EVERY, check) => checked,
            };
            match recovering {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    anyhow::bail!("the liveness lock's server is no longer the primary")
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => anyhow::bail!(
                    "the liveness lock's connection did not answer within {CHECK_EVERY:?}"
                ),
            }
        }
    }
}
