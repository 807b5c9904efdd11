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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use idem_periodic::{Backoff, Reconnect};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::batch::record_batch;
use crate::connect::{broker_waiting_helps, connect_amqp, connect_raw};
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
    /// Whether a queue found classic is used as it is although quorum was
    /// the type (`IDEM_QUEUE_TYPE` unset: [`Topology::keep_existing_classic`]).
    pub keep_existing_classic: bool,
    /// Consumer tag, to tell replicas apart in the broker's UI.
    pub consumer_tag: String,
}

/// Whether the consumer currently has a live broker session: `true` from a
/// successful `basic.consume` until that session ends (error, broker cancel,
/// shutdown); `false` while connecting and reconnecting. Cheap to clone; every
/// clone sees the same flag.
/// Beside it, why the consumer cannot record its batch right now, if it
/// cannot (the database refuses it for a reason that is not the messages'),
/// and a signal raised each time a batch committed new outbox rows, which
/// the replica's dispatcher waits on instead of sleeping out its idle poll.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus {
    connected: Arc<AtomicBool>,
    stalled: Arc<Mutex<Option<String>>>,
    new_work: Arc<tokio::sync::Notify>,
}

impl BrokerStatus {
    /// A status that starts disconnected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a broker session is consuming right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Raised (one stored permit, `notify_one`) after every commit that wrote
    /// an outbox row: work for a dispatcher now, not at its next poll.
    pub fn new_work(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.new_work)
    }

    /// Why the batch in hand cannot be recorded, while it cannot.
    pub fn stalled(&self) -> Option<String> {
        self.stalled.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        ::metrics::gauge!(metrics::BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    }

    fn stall(&self, why: Option<String>) {
        if let Ok(mut stalled) = self.stalled.lock() {
            *stalled = why;
        }
    }
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
    let mut ever_ready = false;
    let mut reconnect = Reconnect::new("inbox", Backoff::new(RECONNECT_MIN, RECONNECT_MAX));
    loop {
        // Before every session: a reconnect may reach another node, with
        // another frame size.
        preflight(&config, ever_ready).await?;
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
            // A first session that fails for a reason waiting cannot fix
            // (credentials, an unknown host, a certificate, a queue declared
            // otherwise) stops the replica with its message; a broker that is
            // merely away (restarting, refusing connections) is waited for,
            // unready meanwhile.
            Err(e) if !ever_ready && !ready && !broker_waiting_helps(&e) => return Err(e),
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
/// A broker that cannot be reached is the session's to report (and wait
/// for); one that idem's own reader cannot use while lapin could (another
/// login mechanism, a TLS difference, an address it cannot parse) is refused
/// here, since without that reader a message lapin refuses would stop the queue.
async fn preflight(config: &InboxConfig, ever_ready: bool) -> anyhow::Result<()> {
    let broker = match connect_raw(&config.amqp_url, raw::ConnectOptions::default()).await {
        Ok(broker) => broker,
        Err(e) if e.is_transient() => return Ok(()),
        // After a session has run, a refusal is a node's, not the settings'
        // (they worked): the session's own connect decides, and waits.
        Err(e) if ever_ready => {
            tracing::warn!(error = %e, "idem's own reader could not reach the broker before reconnecting");
            return Ok(());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "idem's own AMQP reader (which takes the messages lapin refuses off the queue) \
                 cannot connect to the broker; it needs PLAIN login and the same URL as the consumer",
            ));
        }
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
        most: salvage::most(
            usize::from(config.prefetch) + 1,
            config.prefetch_bytes,
            config.admission.max_body(),
        ),
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

async fn session(
    pool: &PgPool,
    config: &InboxConfig,
    shutdown: &CancellationToken,
    status: &BrokerStatus,
    ready: &mut bool,
    progressed: &mut bool,
) -> anyhow::Result<()> {
    let connection = connect_amqp(&config.amqp_url).await?;
    let topology = Topology {
        keep_existing_classic: config.keep_existing_classic,
        ..Topology::for_queue(&config.queue).with_type(config.queue_type)
    };
    let declared = declare(&connection, &topology).await?;
    let channel = connection.create_channel().await?;
    let credit = Credit::new(config.prefetch_bytes, config.prefetch);
    let mut window =
        Window::open(channel.clone(), &config.queue, &config.consumer_tag, credit).await?;
    *ready = true;
    status.set(true);
    let queue_type = match declared.queue {
        QueueType::Classic => "classic",
        QueueType::Quorum { .. } => "quorum",
    };
    tracing::info!(queue = %config.queue, queue_type, prefetch = config.prefetch, prefetch_bytes = config.prefetch_bytes, starting_prefetch = window.count(), "inbox consuming");

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
            settle_batch(pool, &batch, &config.admission, status, shutdown).await?;
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

/// Failed tries after which a batch the database refuses for its data is
/// suspected to hold a poison message.
const POISON_TRIES: u32 = 3;
/// The first and the longest wait before recording a held batch again.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Record `batch` in one transaction (retrying while the database is away
/// or refusing writes), then ack what was recorded and dead-letter what
/// could not be.
///
/// Only an error that says the messages' own data is refused (SQLSTATE class
/// 22, 23 or 54) can make a batch suspect: after [`POISON_TRIES`] of them it
/// is split into single-message transactions, and a single message that still
/// fails is rejected to the dead-letter queue (drained and decided again, so
/// kept, not lost). Any other error is about the server — read-only after a
/// failover, out of connections, shutting down, a lock or statement timeout, a
/// privilege or table a rollout has not brought yet — and the batch is held
/// unacked and retried with jittered backoff for as long as it lasts, with
/// `status` (and so `/readyz`) saying why.
async fn settle_batch(
    pool: &PgPool,
    batch: &[Delivery],
    admission: &Admission,
    status: &BrokerStatus,
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
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut refusals = 0;
    let decisions = loop {
        let started = std::time::Instant::now();
        match record_in_transaction(pool, &items, admission).await {
            Ok(decisions) => {
                status.stall(None);
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
                crate::lag::observe(items.iter().map(|i| i.properties));
                admission.report_refused_replies(&items, &decisions);
                if decisions.iter().any(|d| matches!(d, Decision::New { .. })) {
                    status.new_work.notify_one();
                }
                break decisions;
            }
            Err(e) => {
                let cause = cause_label(&e);
                ::metrics::counter!(metrics::BATCH_RETRIES, "cause" => cause).increment(1);
                if data_refused(&e) {
                    refusals += 1;
                    if refusals >= POISON_TRIES {
                        status.stall(None);
                        return isolate_poison(pool, batch, admission, status, shutdown, &e).await;
                    }
                } else {
                    status.stall(Some(format!("{cause}: {e}")));
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, cause, batch = batch.len(), retry_in = ?delay, "recording batch failed; holding it unacked");
                let stopped = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep(delay) => false,
                };
                if stopped {
                    status.stall(None);
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
    status: &BrokerStatus,
    shutdown: &CancellationToken,
    error: &sqlx::Error,
) -> anyhow::Result<()> {
    if let [delivery] = batch {
        tracing::error!(%error, message_id = ?delivery.properties.message_id(), "the database keeps refusing this message's data; rejecting it to the dead-letter queue (the drain decides it again)");
        ensure_done(
            delivery.reject(BasicRejectOptions { requeue: false }).await,
            "reject",
        )?;
        ::metrics::counter!(metrics::MESSAGES, "decision" => "unrecordable").increment(1);
        return Ok(());
    }
    tracing::warn!(%error, batch = batch.len(), "batch keeps failing; recording its messages one by one");
    for single in batch.chunks(1) {
        Box::pin(settle_batch(pool, single, admission, status, shutdown)).await?;
    }
    Ok(())
}

/// The server refused the messages' own data (SQLSTATE class 22, data
/// exception; 23, integrity constraint; 54, a program limit): retrying the
/// same batch fails the same way. Every other error is the server's.
fn data_refused(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| ["22", "23", "54"].iter().any(|class| c.starts_with(class))))
}

/// The `cause` label of a failed batch: the SQLSTATE (a bounded set), or
/// what kind of failure it was without one.
fn cause_label(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("25006") => "read_only",
            Some(c) if c.starts_with("53") => "resources",
            Some(c) if c.starts_with("57P") => "shutdown",
            Some("57014") => "statement_timeout",
            Some("55P03") => "lock_timeout",
            Some(c) if c.starts_with("40") => "conflict",
            Some(c) if c.starts_with("42") => "schema_or_privilege",
            Some(c) if c.starts_with("08") => "connection",
            Some(c) if ["22", "23", "54"].iter().any(|class| c.starts_with(class)) => "data",
            _ => "other_server_error",
        },
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed => "connection",
        _ => "other",
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
