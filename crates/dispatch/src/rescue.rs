//! The lease rescue: put rows whose lease expired (their holder crashed or
//! stalled) back in play; a periodic job beside the dispatch loop.

use std::time::Duration;

use idem_charge::ChargeClient;
use idem_store::outbox;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Most rows one rescue puts back.
const RESCUE_BATCH: i64 = 1000;

/// The rescuer of one replica, run by [`idem_periodic::run`].
pub(crate) struct LeaseRescue {
    /// The database.
    pool: PgPool,
    /// How long a rescued row waits before its next attempt (its
    /// `next_attempt_at`): rows are rescued as soon as their lease expired;
    /// without idempotency keys, this is long enough for a stalled holder's
    /// late call to land before anyone looks the charge up.
    delay: Duration,
}

impl LeaseRescue {
    /// A rescuer for rows charged through `client` with calls bounded by
    /// `charge_timeout`.
    pub(crate) fn new(pool: PgPool, client: &ChargeClient, charge_timeout: Duration) -> Self {
        // Without keys, a stalled holder's late call must land before anyone
        // looks the charge up and decides to send it again.
        let delay = if client.capabilities().idempotency_keys {
            Duration::ZERO
        } else {
            charge_timeout.saturating_mul(2)
        };
        Self { pool, delay }
    }

    /// Put rows with expired leases back in play; returns how many.
    pub(crate) async fn rescue(&self) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let rescued = outbox::rescue_expired(&mut conn, RESCUE_BATCH, self.delay).await?;
        ::metrics::counter!(metrics::LEASE_RECLAIMS).increment(rescued);
        if rescued > 0 {
            tracing::warn!(
                rescued,
                "reclaimed rows whose lease expired (a replica crashed or stalled)"
            );
        }
        Ok(rescued)
    }
}

impl idem_periodic::Job for LeaseRescue {
    /// Rows put back in play (a warning is logged when there are any).
    type Report = u64;

    fn name(&self) -> &'static str {
        "lease rescue"
    }

    // Not dropped at shutdown, though it could be: it is one statement, which
    // a cut would roll back. It is short, and awaiting it keeps shutdown as it
    // was when the rescue ran inside the dispatch loop.
    async fn run_once(&mut self, _shutdown: &CancellationToken) -> anyhow::Result<u64> {
        Ok(self.rescue().await?)
    }
}
