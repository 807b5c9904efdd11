//! The dispatcher's loop ([`Dispatcher::run`]): bounded concurrency, claims
//! paced by free slots and the provider breaker, the lease rescuer beside it,
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use idem_periodic::{Every, Start};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Dispatched, Dispatcher};
use crate::breaker::Admit;
use crate::metrics;
use crate::rescue::PASS_EVERY;

/// Most walks cut short at their bound taken back to back before an idle
/// wait.
const SHORT_WALKS_PER_POLL: u32 = 8;

impl Dispatcher {
    /// Dispatch until `shutdown`: keep up to `concurrency` calls in flight,
    /// claim only as many rows as there are free slots (so no claimed row waits
    /// on its lease), hold the liveness lock, rescue expired leases and rows
    /// of gone holders every 750 ms or quarter lease if shorter (at once on
    /// start, then jittered), ride out database outages with backoff. On
    /// shutdown, stop claiming and rescuing, and let calls in flight finish
    /// within the grace period.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A child token, so that a dispatch loop that fails also stops the
        // rescuer beside it (and `run` returns the failure).
        let rescue_stop = shutdown.child_token();
        let every = Every::new((self.config.lease / 4).min(PASS_EVERY)).starting(Start::Now);
        let rescuer = idem_periodic::run(self.rescuer(), every, rescue_stop.clone());
        // The liveness lock outlives the dispatch loop's drain: released
        // earlier, other replicas would take rows this one is finishing.
        let live_stop = CancellationToken::new();
        let live = self.liveness.hold(self.pool.clone(), live_stop.clone());
        let dispatching = async {
            let outcome = self.dispatch_until(&shutdown).await;
            rescue_stop.cancel();
            live_stop.cancel();
            outcome
        };
        let ((), (), outcome) = tokio::join!(rescuer, live, dispatching);
        outcome
    }

    async fn dispatch_until(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut error_backoff = Duration::from_millis(100);
        // Walks cut short at their bound since the last idle wait: a few
        // are taken back to back (so accounts beyond a bound are reached
        // without an idle poll each), never an unbounded run (a pass over
        // every blocked account per poll would cost O(accounts)).
        let mut short_walks = 0;
        tracing::info!(owner = %self.config.owner, concurrency = self.config.concurrency, "dispatcher running");
        while !shutdown.is_cancelled() {
            while let Some(joined) = tasks.try_join_next() {
                log_task_end(joined);
            }
            let free = slots.available_permits() as i64;
            ::metrics::gauge!(metrics::IN_FLIGHT)
                .set((self.config.concurrency.max(1) as i64 - free) as f64);
            let limit = free.min(self.config.claim_batch);
            let claimed = match (free, self.breaker.admit()) {
                (0, _) => Ok(Vec::new()),
                (_, Admit::Claim) => self.claim(limit).await,
                (_, Admit::Probe) => self.claim_probe().await,
                (_, Admit::Wait(pause)) => {
                    // Paused for the whole provider: sleep till the probe
                    // (or a call in flight ends), keep no claim.
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                        Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_task_end(joined),
                    }
                    continue;
                }
            };
            let wait = match claimed {
                // A walk cut short at its bound: more accounts to look at now.
                Ok(rows)
                    if rows.is_empty()
                        && free > 0
                        && short_walks < SHORT_WALKS_PER_POLL
                        && self.more_accounts() =>
                {
                    short_walks += 1;
                    Duration::ZERO
                }
                Ok(rows) if rows.is_empty() => self.config.idle_poll,
                Ok(rows) => {
                    error_backoff = Duration::from_millis(100);
                    let full = rows.len() as i64 == limit
                        || (short_walks < SHORT_WALKS_PER_POLL && self.more_accounts());
                    if !full {
                        short_walks = 0;
                    } else if rows.len() as i64 != limit {
                        short_walks += 1;
                    }
                    for row in rows {
                        let permit = Arc::clone(&slots).acquire_owned().await?;
                        let this = self.clone();
                        tasks.spawn(async move {
                            let _permit = permit;
                            this.process_chain(row).await
                        });
                    }
                    // More may be due right away.
                    if full {
                        Duration::ZERO
                    } else {
                        self.config.idle_poll
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?error_backoff, "claim failed; is the database reachable?");
                    let wait = error_backoff;
                    error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            if wait.is_zero() && slots.available_permits() > 0 {
                continue;
            }
            if !wait.is_zero() {
                short_walks = 0;
            }
            // Sleep until the wait is over, new rows are recorded, a slot
            // frees up, or shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.new_work.notified(), if slots.available_permits() > 0 => {}
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_task_end(joined),
            }
        }
        self.drain_chains();
        self.drain(tasks).await;
        Ok(())
    }

    async fn drain(&self, mut tasks: JoinSet<anyhow::Result<Dispatched>>) {
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "dispatcher stopping: waiting for calls in flight"
            );
        }
        let deadline = Instant::now() + self.config.shutdown_grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(joined)) => log_task_end(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        abandoned = tasks.len(),
                        "shutdown grace over; abandoning calls in flight to the lease rescuer"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
        tracing::info!("dispatcher stopped");
    }
}

fn log_task_end(joined: Result<anyhow::Result<Dispatched>, tokio::task::JoinError>) {
    match joined {
        Ok(Ok(_)) => {}
        // The row stays in_flight; its lease expires and the rescuer returns it.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "recording a result failed; the row will be rescued after its lease")
        }
        Err(e) => tracing::error!(error = %e, "dispatch task failed"),
    }
}
