//! The consumer loop: connect, declare, consume, batch, commit, then ack.
//!
//! A delivery is acked only after the transaction that recorded it committed.
//! When the database is down the batch is held (unacked) and retried with
//! backoff; when the broker connection drops, the session is rebuilt and the
//! broker redelivers whatever was unacked, which the inbox then absorbs as
//! duplicates.
//!
//! Whether a live broker session exists right now is published through a
//! [`BrokerStatus`] (readiness), and the loop records the `idem_inbox_*`
//! metrics (no-ops unless the process installed a `metrics` recorder).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use idem_periodic::{Backoff, Reconnect};
use idem_store::redact_url;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::batch::record_batch;
use crate::credit::Credit;
use crate::decision::{Decision, Incoming};
use crate::metrics::{self, decision_label};
use crate::topology::{QueueType, Topology, declare};
use crate::window::{Gathered, Window};
use crate::{raw, salvage};

/// The shortest delay before a reconnect (each is jittered, see
/// [`idem_periodic::Backoff`]).
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// The longest delay before a reconnect.
const RECONNECT_MAX: Duration = Duration::from_secs(15);

/// Settings of the inbox consumer.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Broker URL (may hold a password: never log it unredacted).
    pub amqp_url: String,
    /// The work queue; its dead-letter names derive from it.
    pub queue: String,
    /// Most unacked deliveries the broker may push ahead (basic.qos).
    pub prefetch: u16,
    /// Most body bytes the broker may push ahead: the prefetch count is kept
    /// at or under this divided by the largest body seen recently (see
    /// [`crate::credit`]).
    pub prefetch_bytes: u64,
    /// Most deliveries recorded in one transaction.
    pub batch_size: usize,
    /// How long to wait for a batch to fill once its first delivery arrived.
    pub batch_linger: Duration,
    /// What a delivery must satisfy to be recorded: body size limit, scope
    /// and `reply_to` rules.
    pub admission: Admission,
    /// The work queue's type (a quorum queue has a delivery limit).
    pub queue_type: QueueType,
    /// Consumer tag, to tell replicas apart in the broker's UI.
    pub consumer_tag: String,
}

/// Whether the consumer currently has a live broker session: `true` from a
/// successful `basic.consume` until that session ends (error, broker cancel,
/// shutdown); `false` while connecting and reconnecting. Cheap to clone; every
/// clone sees the same flag.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Arc<AtomicBool>);

impl BrokerStatus {
    /// A status that starts disconnected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a broker session is consuming right now.
    pub fn is_connected(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, connected: bool) {
        self.0.store(connected, Ordering::Release);
        ::metrics::gauge!(metrics::BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    }
}

/// Connect to the broker, or say clearly what to check.
pub async fn connect_amqp(url: &str) -> anyhow::Result<Connection> {
    let shown = redact_url(url);
    let connect = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e).with_context(|| broker_hint(&shown)),
        Err(_) => bail!("{}: timed out after 15 s", broker_hint(&shown)),
    }
}

fn broker_hint(shown: &str) -> String {
    format!(
        "cannot connect to RabbitMQ at {shown}: check that the broker is running and reachable, \
         and that IDEM_AMQP_URL (or --amqp-url) has the right host, port, credentials and vhost \
         (amqps://: the broker's certificate must be issued for that host by a CA in the system \
         store, or in SSL_CERT_FILE)"
    )
}

/// Consume until `shutdown` is cancelled. The first session must come up (a
/// misconfiguration fails fast); after that, failures reconnect with jittered
/// backoff.
pub async fn run(
    pool: PgPool,
    config: InboxConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_reporting(pool, config, shutdown, BrokerStatus::new()).await
}

/// [`run`], publishing whether a broker session is live through `status`
/// (for readiness checks).
pub async fn run_reporting(
    pool: PgPool,
    config: InboxConfig,
    shutdown: CancellationToken,
    status: BrokerStatus,
) -> anyhow::Result<()> {
    preflight(&config).await?;
    let mut ever_ready = false;
    let mut reconnect = Reconnect::new("inbox", Backoff::new(RECONNECT_MIN, RECONNECT_MAX));
    loop {
        let mut ready = false;
        let mut progressed = false;
        let result = session(
            &pool,
            &config,
            &shutdown,
            &status,
            &mut ready,
            &mut progressed,
        )
        .await;
        status.set(false);
        if shutdown.is_cancelled() {
            return result;
        }
        let error = match result {
            Ok(()) => anyhow::anyhow!("consumer stream ended"),
            Err(e) if !ever_ready && !ready => return Err(e),
            Err(e) => e,
        };
        ever_ready |= ready;
        if ready {
            ::metrics::counter!(metrics::RECONNECTS).increment(1);
        }
        if refused_by_parser(&error) {
            salvage_head(&pool, &config).await;
        }
        // Only a session that got work done resets the backoff; one that dies
        // right after consuming keeps backing off.
        if !reconnect.after_loss(&error, progressed, &shutdown).await {
            return Ok(());
        }
    }
}

/// Before the first session: learn the frame size the broker accepts from
/// publishers, and refuse to start if a header that large could nest deeper
/// than this process's threads can parse (`crate::stack`). A broker that
/// cannot be reached is the first session's to report.
async fn preflight(config: &InboxConfig) -> anyhow::Result<()> {
    let Ok(broker) = raw::Connection::connect(&config.amqp_url).await else {
        return Ok(());
    };
    let frame_max = broker.server_frame_max();
    let _ = broker.close().await;
    crate::stack::check(frame_max, crate::stack::current()).map_err(anyhow::Error::msg)
}

/// Whether a session ended because lapin refused a frame the broker sent:
/// its parser failed (bytes that are not UTF-8), or the frame was larger
/// than the size lapin negotiated (a header at the broker's limit that grew
/// on redelivery, `x-delivery-count`, `x-death`). Either way the head message
/// is one no library can hand over.
fn refused_by_parser(error: &anyhow::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    error.chain().any(|cause| {
        cause
            .downcast_ref::<lapin::Error>()
            .is_some_and(|e| match e.kind() {
                lapin::ErrorKind::ParsingError(_) => true,
                lapin::ErrorKind::ProtocolError(amqp) => {
                    matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR))
                }
                _ => false,
            })
    })
}

/// After lapin refused a frame: take the queue's head with idem's own reader
/// (the refused message and what was prefetched beside it, which the broker
/// requeued) and decide it, before lapin consumes again. A failure is logged:
/// the next refusal tries again, and the delivery limit is the backstop.
async fn salvage_head(pool: &PgPool, config: &InboxConfig) {
    let run = salvage::Salvage {
        amqp_url: &config.amqp_url,
        queue: &config.queue,
        most: (usize::from(config.prefetch) + 1).min(SALVAGE_MOST),
        admission: &config.admission,
        origin: salvage::Origin::WorkQueue,
    };
    match salvage::take_head(pool, &run).await {
        Ok(taken) => {
            ::metrics::counter!(metrics::SALVAGED, "queue" => "work")
                .increment(taken.decisions.len() as u64);
            tracing::warn!(
                taken = taken.decisions.len(),
                quarantined = taken.quarantined(),
                "lapin refused a frame: idem's own reader took the queue's head"
            );
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "lapin refused a frame and idem's own reader could not take the queue's head; retrying after the next refusal"
            )
        }
    }
}

/// Most messages one salvage takes: the refused one is among the first
/// `prefetch + 1`, the broker having requeued the session's unacked ones.
const SALVAGE_MOST: usize = 1000;

async fn session(
    pool: &PgPool,
    config: &InboxConfig,
    shutdown: &CancellationToken,
    status: &BrokerStatus,
    ready: &mut bool,
    progressed: &mut bool,
) -> anyhow::Result<()> {
    let connection = connect_amqp(&config.amqp_url).await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::for_queue(&config.queue).with_type(config.queue_type);
    declare(&channel, &topology).await?;
    let credit = Credit::new(config.prefetch_bytes, config.prefetch);
    let mut window =
        Window::open(channel.clone(), &config.queue, &config.consumer_tag, credit).await?;
    *ready = true;
    status.set(true);
    tracing::info!(queue = %config.queue, prefetch = config.prefetch, prefetch_bytes = config.prefetch_bytes, starting_prefetch = window.count(), "inbox consuming");

    while let Some(Gathered {
        batch,
        error,
        ended,
    }) = window
        .next_batch(config.batch_size, config.batch_linger, shutdown)
        .await?
    {
        if !batch.is_empty() {
            window.arrived(&batch, ended).await?;
            settle_batch(pool, &batch, &config.admission, shutdown).await?;
            // Acked: the bodies are not needed any more.
            drop(batch);
            *progressed = true;
        }
        if let Some(e) = error {
            return Err(e.into());
        }
        if ended {
            if window.ended().await? {
                continue;
            }
            bail!("the broker cancelled the consumer");
        }
        window.settled().await?;
    }

    // Graceful stop: no new deliveries; what was prefetched but not recorded
    // goes back to the queue when the channel closes.
    let _ = channel
        .basic_cancel(
            config.consumer_tag.as_str().into(),
            BasicCancelOptions::default(),
        )
        .await;
    let _ = connection.close(200, "idem shutting down".into()).await;
    tracing::info!("inbox stopped");
    Ok(())
}

/// Failed tries after which a batch whose failure the database itself reports
/// (not a lost connection) is suspected to hold a poison message.
const POISON_TRIES: u32 = 3;

/// Record `batch` in one transaction (retrying while the database is away),
/// then ack what was recorded and dead-letter what could not be.
///
/// A batch the database keeps refusing on a healthy connection is split into
/// single-message transactions; a single message that still fails is rejected
/// to the dead-letter queue (kept, not lost) so that it cannot stall the queue.
async fn settle_batch(
    pool: &PgPool,
    batch: &[Delivery],
    admission: &Admission,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let items: Vec<Incoming<'_>> = batch
        .iter()
        .map(|d| Incoming {
            properties: &d.properties,
            body: &d.data,
            redelivered: d.redelivered,
        })
        .collect();
    let spans = crate::trace::message_spans(batch);
    let mut backoff = Duration::from_millis(100);
    let mut refusals = 0;
    let decisions = loop {
        let started = std::time::Instant::now();
        match record_in_transaction(pool, &items, admission).await {
            Ok(decisions) => {
                ::metrics::histogram!(metrics::BATCH_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                ::metrics::counter!(metrics::BATCHES).increment(1);
                for decision in &decisions {
                    ::metrics::counter!(metrics::MESSAGES, "decision" => decision_label(decision))
                        .increment(1);
                    if let Decision::Quarantined { code } = decision {
                        ::metrics::counter!(metrics::QUARANTINED, "reason" => *code).increment(1);
                    }
                }
                admission.report_refused_replies(&items, &decisions);
                break decisions;
            }
            Err(e) => {
                ::metrics::counter!(metrics::BATCH_RETRIES).increment(1);
                if server_refused(&e) {
                    refusals += 1;
                }
                if refusals >= POISON_TRIES {
                    return isolate_poison(pool, batch, admission, shutdown, &e).await;
                }
                tracing::warn!(error = %e, batch = batch.len(), retry_in = ?backoff, "recording batch failed; holding it unacked");
                let stopped = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep(backoff) => false,
                };
                if stopped {
                    for delivery in batch {
                        let _ = delivery
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await;
                    }
                    return Ok(());
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    crate::trace::finish(spans, decisions.iter().map(decision_label));
    acknowledge(batch, &decisions).await
}

async fn isolate_poison(
    pool: &PgPool,
    batch: &[Delivery],
    admission: &Admission,
    shutdown: &CancellationToken,
    error: &sqlx::Error,
) -> anyhow::Result<()> {
    if let [delivery] = batch {
        tracing::error!(%error, message_id = ?delivery.properties.message_id(), "the database keeps refusing this message; rejecting it to the dead-letter queue");
        ensure_done(
            delivery.reject(BasicRejectOptions { requeue: false }).await,
            "reject",
        )?;
        ::metrics::counter!(metrics::MESSAGES, "decision" => "unrecordable").increment(1);
        return Ok(());
    }
    tracing::warn!(%error, batch = batch.len(), "batch keeps failing; recording its messages one by one");
    for single in batch.chunks(1) {
        Box::pin(settle_batch(pool, single, admission, shutdown)).await?;
    }
    Ok(())
}

/// The server answered with an error that is not about the connection or a
/// transient conflict (class 08 connection, 40 rollback, 53 resources, 57
/// operator intervention): retrying the same batch will fail the same way.
fn server_refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !db.code().is_some_and(|c| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| c.starts_with(class))
        }),
        _ => false,
    }
}

/// lapin answers `Ok(false)` when the channel is gone: the broker will
/// redeliver, so the session must be rebuilt rather than carry on.
fn ensure_done(result: lapin::Result<bool>, what: &str) -> anyhow::Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => bail!("{what} not sent: the channel is closed (the broker will redeliver)"),
        Err(e) => Err(e).context(format!("{what} failed (the broker will redeliver)")),
    }
}

async fn record_in_transaction(
    pool: &PgPool,
    items: &[Incoming<'_>],
    admission: &Admission,
) -> Result<Vec<Decision>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let decisions = record_batch(&mut tx, items, admission).await?;
    tx.commit().await?;
    idem_crash::point("inbox.after_commit");
    Ok(decisions)
}

async fn acknowledge(batch: &[Delivery], decisions: &[Decision]) -> anyhow::Result<()> {
    if decisions.iter().all(Decision::ackable) {
        // Deliveries of one channel are acked in order, so one `multiple` ack
        // of the last tag covers the batch.
        if let Some(last) = batch.last() {
            ensure_done(last.ack(BasicAckOptions { multiple: true }).await, "ack")?;
        }
        return Ok(());
    }
    for (delivery, decision) in batch.iter().zip(decisions) {
        if decision.ackable() {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await?;
        }
    }
    Ok(())
}
