//! The consumer of a session, re-created to apply a new prefetch count, and
//! the batches read from it.
//!
//! RabbitMQ fixes a consumer's prefetch when the consumer is created: a later
//! per-consumer `basic.qos` (`global = false`) applies only to consumers
//! created after it, and the channel-wide form (`global = true`) is refused
//! by quorum queues. So a new count ([`crate::credit::Credit`]) takes effect
//! by cancelling the consumer (from its `cancel-ok` on, the broker sends it
//! nothing more), settling what it had already been sent, and consuming again
//! under the new `basic.qos`. The cancelled consumer is drained before the
//! next one exists: a batch is acked with `multiple` up to its last tag,
//! which must never cover an unrecorded delivery of a later consumer.
//! Cancelling returns nothing to the queue, so it costs no redelivery (and
//! counts against no delivery limit).

use std::time::Duration;

use anyhow::Context;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::credit::Credit;
use crate::metrics;

/// What one wait on the consumer brought.
pub(crate) struct Gathered {
    /// Deliveries in arrival order (empty only if the stream ended at once).
    pub(crate) batch: Vec<Delivery>,
    /// The stream failed after `batch`: settle it, then rebuild the session.
    pub(crate) error: Option<lapin::Error>,
    /// The stream ended after `batch`: settle it, then call
    /// [`Window::ended`] (polling an ended stream would wait forever).
    pub(crate) ended: bool,
}

/// The consumer of a session and the prefetch count it was created with.
pub(crate) struct Window {
    /// The session's channel (the consumer's, and the acks').
    channel: Channel,
    /// The work queue.
    queue: String,
    /// The consumer tag (reused: a cancelled tag is free again on the channel).
    tag: String,
    /// What the count should be.
    credit: Credit,
    /// The consumer being read.
    consumer: Consumer,
    /// The count `consumer` was created with.
    applied: u16,
    /// `consumer` was cancelled to change the count: what it still yields is
    /// settled, then its stream ends and the next consumer is created.
    draining: bool,
}

impl Window {
    /// `basic.qos` with the credit's count, then `basic.consume`.
    pub(crate) async fn open(
        channel: Channel,
        queue: &str,
        tag: &str,
        credit: Credit,
    ) -> anyhow::Result<Self> {
        let applied = credit.count();
        let consumer = consume(&channel, queue, tag, applied).await?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            tag: tag.to_owned(),
            credit,
            consumer,
            applied,
            draining: false,
        })
    }

    /// The count the current consumer was created with.
    pub(crate) fn count(&self) -> u16 {
        self.applied
    }

    /// Up to `batch_size` deliveries: the first whenever it comes, the rest
    /// as long as they come within `linger` of it. `None` on shutdown.
    pub(crate) async fn next_batch(
        &mut self,
        batch_size: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Gathered>> {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            next = self.consumer.next() => next,
        };
        let mut gathered = Gathered {
            batch: Vec::new(),
            error: None,
            ended: false,
        };
        match first {
            Some(delivery) => gathered.batch.push(delivery?),
            None => {
                gathered.ended = true;
                return Ok(Some(gathered));
            }
        }
        let deadline = Instant::now() + linger;
        while gathered.batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => gathered.batch.push(delivery),
                Ok(Some(Err(e))) => {
                    gathered.error = Some(e);
                    break;
                }
                Ok(None) => {
                    gathered.ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(Some(gathered))
    }

    /// Account for a batch that arrived, before it is settled. A count that
    /// must shrink cancels the consumer now (unless its stream has `ended`),
    /// so that this batch's acks give the broker no credit to push more
    /// bodies of that size.
    pub(crate) async fn arrived(&mut self, batch: &[Delivery], ended: bool) -> anyhow::Result<()> {
        let largest = batch.iter().map(|d| d.data.len()).max().unwrap_or(0);
        let count = self.credit.observe(largest as u64);
        if count < self.applied && !self.draining && !ended {
            self.cancel().await?;
        }
        Ok(())
    }

    /// After a batch was settled: a count that may grow cancels the consumer
    /// too (growing can wait for the batch; shrinking cannot).
    pub(crate) async fn settled(&mut self) -> anyhow::Result<()> {
        if self.credit.count() > self.applied && !self.draining {
            self.cancel().await?;
        }
        Ok(())
    }

    /// The consumer's stream ended, and what it yielded is settled.
    /// `Ok(true)`: it was cancelled here to change the count, and the next
    /// consumer now runs; `Ok(false)`: the broker cancelled it (queue
    /// deleted, node going down).
    pub(crate) async fn ended(&mut self) -> anyhow::Result<bool> {
        if !self.draining {
            return Ok(false);
        }
        let count = self.credit.count();
        self.consumer = consume(&self.channel, &self.queue, &self.tag, count).await?;
        tracing::debug!(from = self.applied, to = count, "inbox prefetch changed");
        self.applied = count;
        self.draining = false;
        Ok(true)
    }

    /// Stop the broker sending to this consumer. Awaits the `cancel-ok`,
    /// which the broker sends after the deliveries it had already started:
    /// they stay on the stream, ahead of its end.
    async fn cancel(&mut self) -> anyhow::Result<()> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .context("basic.cancel (to change the prefetch count)")?;
        self.draining = true;
        Ok(())
    }
}

/// A consumer on `queue` with at most `count` unacked deliveries.
async fn consume(
    channel: &Channel,
    queue: &str,
    tag: &str,
    count: u16,
) -> anyhow::Result<Consumer> {
    channel
        .basic_qos(count, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    ::metrics::gauge!(metrics::PREFETCH).set(f64::from(count));
    Ok(consumer)
}
