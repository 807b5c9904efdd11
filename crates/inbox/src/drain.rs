//! The dead-letter queue's reader: every interval, [`salvage::take_head`]
//! over `<queue>.dead`, so that whatever the broker dead-lettered (the work
//! queue's delivery limit reached, a message even quarantine could not store,
//! one a crash kept redelivering) goes through the same decision as any
//! delivery. A valid charge found there is charged once (the inbox
//! deduplicates it against the copy that may already be recorded), anything
//! else is quarantined with its raw bytes and the broker's `x-death` reason.
//! Nothing sits in the dead-letter queue that no tool reads.
//!
//! Several replicas may drain at once: `basic.get` hands each message to one
//! of them, and the inbox absorbs a copy redelivered after a crash.

use std::time::Duration;

use idem_periodic::Job;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::metrics;
use crate::raw::RawError;
use crate::salvage::{self, Origin, Salvage};

/// Messages taken per transaction.
pub const BATCH: usize = 200;
/// Transactions per run at most, so a run (and the shutdown wait) stays
/// short however long the queue; the next run goes on.
const BATCHES_PER_RUN: usize = 50;

/// The drainer of one work queue's dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetterDrain {
    /// The inbox's database.
    pub pool: PgPool,
    /// Broker URL (`amqp://`; may hold a password: never log it).
    pub amqp_url: String,
    /// The dead-letter queue, `<queue>.dead`.
    pub queue: String,
    /// What a message must satisfy to be recorded, as for the work queue.
    pub admission: Admission,
    /// Body bytes one transaction may hold (`IDEM_PREFETCH_BYTES`).
    pub memory_budget: u64,
}

/// What one run took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Messages taken off the dead-letter queue and decided.
    pub taken: usize,
    /// Of those, quarantined.
    pub quarantined: usize,
    /// Of those, stored nowhere (left in the queue).
    pub left: usize,
}

/// The broker closed the channel with 404: the queue does not exist.
fn not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<RawError>(),
            Some(RawError::ChannelClosed { code: 404, .. })
        )
    })
}

impl Job for DeadLetterDrain {
    type Report = Drained;

    fn name(&self) -> &'static str {
        "dead-letter drain"
    }

    async fn run_once(&mut self, shutdown: &CancellationToken) -> anyhow::Result<Drained> {
        let mut report = Drained::default();
        for _ in 0..BATCHES_PER_RUN {
            if shutdown.is_cancelled() {
                break;
            }
            let run = Salvage {
                amqp_url: &self.amqp_url,
                queue: &self.queue,
                most: salvage::most(BATCH, self.memory_budget, self.admission.max_body()),
                admission: &self.admission,
                origin: Origin::DeadLetters,
            };
            let taken = match salvage::take_head(&self.pool, &run).await {
                Ok(taken) => taken,
                // Not declared yet: the consumer declares it when it first
                // connects, which may come after this replica's first drain.
                Err(e) if not_found(&e) => {
                    tracing::debug!(queue = %self.queue, "no dead-letter queue yet");
                    break;
                }
                Err(e) => return Err(e),
            };
            let n = taken.decisions.len();
            report.taken += n;
            report.quarantined += taken.quarantined();
            report.left += taken.decisions.iter().filter(|d| !d.ackable()).count();
            // A short batch emptied the queue; one where every message stayed
            // would only take them again.
            if n < run.most || report.left == report.taken {
                break;
            }
        }
        Ok(report)
    }

    fn done(&mut self, report: Drained, elapsed: Duration) {
        ::metrics::counter!(metrics::SALVAGED, "queue" => "dead_letter")
            .increment(report.taken as u64);
        if report.taken > 0 {
            tracing::warn!(
                queue = %self.queue,
                taken = report.taken,
                quarantined = report.quarantined,
                left = report.left,
                ?elapsed,
                "drained the dead-letter queue: every message decided (charged once, or quarantined with the broker's reason)"
            );
        } else {
            tracing::debug!(queue = %self.queue, "dead-letter queue empty");
        }
    }
}
