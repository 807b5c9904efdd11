//! The lease rescue: put rows back in play whose lease expired (their holder
//! crashed or stalled) or whose holder is gone (its liveness lock released,
//! see `crate::liveness`); a periodic job beside the dispatch loop.
//!
//! A row is taken from a gone holder only when it has been seen so, under
//! the same lease, for [`ORPHAN_GRACE`]: after a failover the new primary
//! holds no locks until the replicas take theirs again, and a replica whose
//! lock's connection alone was cut takes it again within about a second.
//! Without idempotency keys a row so rescued is not due before its lease
//! would have expired either (see `idem_store::rescue::rescue_orphaned`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use idem_charge::ChargeClient;
use idem_store::rescue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
    /// Rows (id, lease token) found without a living holder, and when first.
    suspects: HashMap<(i64, Uuid), Instant>,
    /// The provider honours no idempotency keys.
    keyless: bool,
}

/// How long a row must be seen without a living holder, under one lease,
/// before it is rescued.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_millis(1_500);

/// How often the rescuer looks for rows of gone holders (and expired
/// leases): a dead replica's rows are back in play within two of these.
pub(crate) const PASS_EVERY: Duration = Duration::from_millis(750);

impl LeaseRescue {
    /// A rescuer for rows charged through `client` with calls bounded by
    /// `charge_timeout`.
    pub(crate) fn new(pool: PgPool, client: &ChargeClient, charge_timeout: Duration) -> Self {
        // Without keys, a stalled holder's late call must land before anyone
        // looks the charge up and decides to send it again.
        let keyless = !client.capabilities().idempotency_keys;
        let delay = if keyless {
            charge_timeout.saturating_mul(2)
        } else {
            Duration::ZERO
        };
        Self {
            pool,
            delay,
            suspects: HashMap::new(),
            keyless,
        }
    }

    /// Put rows with expired leases, and rows a gone holder held for two
    /// passes, back in play; returns how many.
    pub(crate) async fn rescue(&mut self) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let expired = rescue::rescue_expired(&mut conn, RESCUE_BATCH, self.delay).await?;
        ::metrics::counter!(metrics::LEASE_RECLAIMS, "cause" => "expired").increment(expired);
        if expired > 0 {
            tracing::warn!(
                rescued = expired,
                "reclaimed rows whose lease expired (a replica crashed or stalled)"
            );
        }
        let now = Instant::now();
        let orphaned = rescue::orphaned(&mut conn, RESCUE_BATCH).await?;
        // Forget rows no longer orphaned (settled, re-leased, lock back);
        // remember new ones from now.
        let mut suspects = HashMap::with_capacity(orphaned.len());
        for row in orphaned {
            let since = self.suspects.get(&row).copied().unwrap_or(now);
            suspects.insert(row, since);
        }
        self.suspects = suspects;
        let confirmed: Vec<(i64, Uuid)> = self
            .suspects
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= ORPHAN_GRACE)
            .map(|(row, _)| *row)
            .collect();
        let gone = if confirmed.is_empty() {
            0
        } else {
            let rescued =
                rescue::rescue_orphaned(&mut conn, &confirmed, self.delay, self.keyless).await?;
            // Rows skipped as locked stay suspects for the next pass.
            self.suspects.retain(|(id, _), _| !rescued.contains(id));
            rescued.len() as u64
        };
        ::metrics::counter!(metrics::LEASE_RECLAIMS, "cause" => "holder_gone").increment(gone);
        if gone > 0 {
            tracing::warn!(
                rescued = gone,
                "reclaimed rows whose holder is gone (its database session ended: killed, crashed or cut off)"
            );
        }
        Ok(expired + gone)
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
