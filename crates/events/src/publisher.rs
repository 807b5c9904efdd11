//! The publisher: claim due result events, publish each with publisher
//! confirms, forget the confirmed ones, back off the rest — in a loop that
//! reconnects by itself and rides out broker and database outages.
//!
//! At least once to the broker: an event is deleted only after every publish
//! it owes was confirmed. A nack, a closed channel or a missing confirm leaves
//! it for a retry (with backoff). A step claims its events by locking them in
//! a transaction that stays open until their outcome is recorded
//! ([`idem_store::event::claim`]): a publisher that dies, or whose database
//! connection drops, leaves them due again at once. A retry may publish a
//! result twice; both copies carry the same message_id
//! ([`crate::wire::event_id`]).
//!
//! A reply the broker cannot route (a `reply_to` queue that no longer exists)
//! is returned (`mandatory`), counted in `idem_events_unroutable_total{target}`
//! and not retried: retrying cannot create the queue, and the result stays on
//! the outbox row. Publishes to the results exchange are not mandatory: an
//! exchange nobody has bound a queue to is a deployment choice, and a return
//! per event would flood the log (lapin warns on each returned message).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use idem_periodic::{Backoff, Reconnect, endpoints};
use idem_store::event::{self, ResultEvent};
use idem_store::redact_url;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::wire::{self, ResultBody};

/// How long a step waits for the broker to take and confirm its publishes
/// (its transaction, and the locks on its events, stay open meanwhile).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server lets a step's transaction sit idle before ending it
/// (and with it the claim): well above [`CONFIRM_TIMEOUT`], so a live
/// publisher always records its outcome first.
pub const STEP_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Backoff of a failed event: doubles per attempt from this...
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// ...up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the backlog gauges are read from the database.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// The shortest delay before a reconnect (each is jittered, see
/// [`idem_periodic::Backoff`]).
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// The longest delay before a reconnect.
const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// A broker session that lasted this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);
/// How long shutdown lets a step in progress finish (it is safe to cut: its
/// transaction rolls back and its events are due again).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of the result publisher.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Broker URL (may hold a password: never log it unredacted).
    pub amqp_url: String,
    /// The topic exchange results are published to (declared durable).
    pub exchange: String,
    /// Most events claimed per step.
    pub batch: i64,
    /// Sleep between steps when nothing is due.
    pub idle_poll: Duration,
}

/// What one [`Publisher::publish_once`] step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Events claimed.
    pub claimed: usize,
    /// Events whose every publish was confirmed: deleted.
    pub published: usize,
    /// Events backed off for a retry (nack, no confirm, channel lost).
    pub failed: usize,
    /// Publishes the broker returned as unroutable (counted, not retried).
    pub unroutable: usize,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The database could not be read or written; the broker session is fine.
    #[error("result events: database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker session is broken: reconnect. The step's events were backed
    /// off (or, if the database was also away, are due again: their
    /// transaction rolled back).
    #[error("result events: broker session lost: {0:#}")]
    Broker(anyhow::Error),
}

/// Where one publish of an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The results exchange, routing key `charge.<state>`.
    Exchange,
    /// The request's `reply_to` queue, through the default exchange.
    ReplyTo,
}

impl Target {
    /// The `target` label of [`metrics::UNROUTABLE`], one of [`metrics::TARGETS`].
    fn label(self) -> &'static str {
        match self {
            Target::Exchange => "exchange",
            Target::ReplyTo => "reply_to",
        }
    }
}

/// The result publisher of one replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// The database holding the event outbox.
    pool: PgPool,
    /// Settings.
    config: PublisherConfig,
}

/// One endpoint, within the 15 s a handshake gets.
async fn connect(url: &str) -> anyhow::Result<Connection> {
    match tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(connected) => Ok(connected?),
        Err(_) => bail!("timed out after 15 s"),
    }
}

impl Publisher {
    /// A publisher over `pool`.
    pub fn new(pool: PgPool, config: PublisherConfig) -> Self {
        Self { pool, config }
    }

    /// Connect, enable confirms and declare the results exchange: a channel
    /// ready for [`Publisher::publish_once`].
    pub async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        // Every endpoint of the list, from a random one on: a cluster's
        // nodes share the exchange, so any of them takes the results.
        let (connection, _) = endpoints::first_answering(&self.config.amqp_url, redact_url, connect)
            .await
            .map_err(|failed| {
                anyhow::anyhow!(
                    "result publisher cannot connect to RabbitMQ ({failed}): check that the broker is \
                     running and reachable and that IDEM_AMQP_URL is right; results wait in the database"
                )
            })?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        declare_exchange(&channel, &self.config.exchange).await?;
        Ok((connection, channel))
    }

    /// Publish until `shutdown`: reconnect with jittered backoff when the
    /// broker session is lost, back off when the database is away. Never gives
    /// up: results wait in the database meanwhile.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        let mut reconnect = Reconnect::new("result publisher", backoff);
        tracing::info!(exchange = %self.config.exchange, "result publisher running");
        loop {
            let mut progressed = false;
            let result = self.session(&shutdown, &mut progressed).await;
            if shutdown.is_cancelled() {
                tracing::info!("result publisher stopped");
                return Ok(());
            }
            let error = result.err().unwrap_or_else(|| anyhow!("session ended"));
            ::metrics::counter!(metrics::RECONNECTS).increment(1);
            if !reconnect.after_loss(&error, progressed, &shutdown).await {
                return Ok(());
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        progressed: &mut bool,
    ) -> anyhow::Result<()> {
        // Connecting may hang on an unreachable host: do not hold up shutdown.
        let (connection, channel) = tokio::select! {
            opened = self.open() => opened?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        tracing::info!(exchange = %self.config.exchange, "result publisher connected");
        let since = Instant::now();
        let outcome = self.publish_loop(&channel, shutdown, progressed).await;
        // A session that held for a while was healthy, even if idle: the next
        // outage starts its backoff afresh.
        *progressed |= since.elapsed() >= HEALTHY_SESSION;
        let _ = connection
            .close(200, "idem result publisher closing".into())
            .await;
        outcome
    }

    async fn publish_loop(
        &self,
        channel: &Channel,
        shutdown: &CancellationToken,
        progressed: &mut bool,
    ) -> anyhow::Result<()> {
        let mut db_backoff = Duration::from_millis(100);
        let mut next_backlog = Instant::now();
        while !shutdown.is_cancelled() {
            if !channel.status().connected() {
                bail!("the channel is closed");
            }
            if Instant::now() >= next_backlog {
                self.sample_backlog().await;
                next_backlog = Instant::now() + BACKLOG_EVERY;
            }
            let step = tokio::select! {
                step = self.publish_once(channel) => step,
                _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => break,
            };
            let wait = match step {
                Ok(step) => {
                    db_backoff = Duration::from_millis(100);
                    *progressed |= step.published > 0;
                    if step.claimed as i64 >= self.config.batch {
                        continue; // more may be due right away
                    }
                    self.config.idle_poll
                }
                Err(StepError::Broker(e)) => return Err(e),
                Err(e @ StepError::Database(_)) => {
                    tracing::warn!(error = %e, retry_in = ?db_backoff, "result publisher cannot reach the database; retrying");
                    let wait = db_backoff;
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }

    /// One step: claim due events, publish each to its targets on `channel`
    /// (which must have confirms on), wait for the confirms, then delete the
    /// confirmed events and back off the others — one transaction, whose
    /// row locks are the claim.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn publish_once(&self, channel: &Channel) -> Result<Step, StepError> {
        let mut tx = self.pool.begin().await?;
        // The claim lives as long as this transaction. If this process
        // freezes or its network to the database drops, the server would
        // hold the locks until TCP keepalive notices (hours): the claim bounds
        // the step's idle time at STEP_IDLE_LIMIT, which puts its events back
        // in play as the old 30 s lease did, and overrides a shorter server
        // setting, under which every step would die before its record and
        // republish forever.
        let events = event::claim(&mut tx, self.config.batch, STEP_IDLE_LIMIT).await?;
        if events.is_empty() {
            tx.commit().await?;
            return Ok(Step::default());
        }
        // `ok[i]`: every publish of event i went out and was confirmed. An
        // event after a failed publish is not tried (the channel is gone).
        let mut broken = None;
        let mut confirms = Vec::new();
        let mut ok = vec![false; events.len()];
        // One deadline for handing the publishes over and their confirms: a
        // broker that blocks the connection (a memory or disk alarm) stops
        // reading it, and a publish then waits for socket space for as long
        // as the alarm lasts — with this step's transaction open.
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        for (i, ev) in events.iter().enumerate() {
            match tokio::time::timeout_at(deadline, self.publish_event(channel, ev)).await {
                Ok(Ok(owed)) => {
                    confirms.extend(owed.into_iter().map(|(target, c)| (i, target, c)));
                    ok[i] = true;
                }
                Ok(Err(e)) => {
                    broken = Some(e);
                    break;
                }
                Err(_) => {
                    broken = Some(anyhow!(
                        "the broker did not take the publishes within {CONFIRM_TIMEOUT:?} \
                         (is the connection blocked by a resource alarm?)"
                    ));
                    break;
                }
            }
        }
        let unroutable = await_confirms(&events, confirms, &mut ok, &mut broken, deadline).await;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for (ev, ok) in events.iter().zip(&ok) {
            if *ok { done.push(ev) } else { failed.push(ev) }
        }
        self.record(&mut tx, &done, &failed, broken.as_ref())
            .await?;
        tx.commit().await?;
        // Counted once forgotten: a step whose commit failed publishes again.
        for ev in &done {
            ::metrics::counter!(metrics::PUBLISHED, "kind" => ev.kind.as_str()).increment(1);
        }
        match broken {
            Some(e) => Err(StepError::Broker(e)),
            None => Ok(Step {
                claimed: events.len(),
                published: done.len(),
                failed: failed.len(),
                unroutable,
            }),
        }
    }

    /// Publish `ev` to each of its targets; the confirms still to await.
    async fn publish_event(
        &self,
        channel: &Channel,
        ev: &ResultEvent,
    ) -> anyhow::Result<Vec<(Target, PublisherConfirm)>> {
        let body = serde_json::to_vec(&ResultBody::of(ev)).context("encoding a result event")?;
        let properties = wire::properties(ev);
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let optional = BasicPublishOptions::default();
        let mut owed = Vec::with_capacity(2);
        if ev.kind.to_exchange() {
            let key = wire::routing_key(ev.state);
            let confirm = channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    key.as_str().into(),
                    optional,
                    &body,
                    properties.clone(),
                )
                .await
                .context("publishing to the results exchange")?;
            owed.push((Target::Exchange, confirm));
        }
        // The address passed `IDEM_REPLY_TO_ALLOW` at intake, where the
        // scope and the rules are known (`idem_inbox::admission`): a refused
        // one never reaches a row, so this sends what the row holds.
        if let Some(reply_to) = &ev.reply_to {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    mandatory,
                    &body,
                    properties,
                )
                .await
                .context("publishing to reply_to")?;
            owed.push((Target::ReplyTo, confirm));
        }
        Ok(owed)
    }

    /// Delete the confirmed events and back off the failed ones.
    async fn record(
        &self,
        conn: &mut sqlx::PgConnection,
        done: &[&ResultEvent],
        failed: &[&ResultEvent],
        broken: Option<&anyhow::Error>,
    ) -> Result<(), sqlx::Error> {
        if !done.is_empty() {
            let ids: Vec<i64> = done.iter().map(|e| e.id).collect();
            event::published(&mut *conn, &ids).await?;
        }
        if !failed.is_empty() {
            let ids: Vec<i64> = failed.iter().map(|e| e.id).collect();
            let reason = broken.map_or_else(
                || "the broker nacked the publish".to_owned(),
                |e| format!("{e:#}"),
            );
            event::retry(&mut *conn, &ids, RETRY_BASE, RETRY_MAX, &reason).await?;
            ::metrics::counter!(metrics::FAILED).increment(failed.len() as u64);
            tracing::warn!(failed = failed.len(), %reason, "result events not confirmed; retrying with backoff");
        }
        Ok(())
    }

    async fn sample_backlog(&self) {
        let sampled = async {
            let mut conn = self.pool.acquire().await?;
            event::backlog(&mut conn).await
        };
        match tokio::time::timeout(BACKLOG_EVERY, sampled).await {
            Ok(Ok((count, oldest))) => {
                ::metrics::gauge!(metrics::BACKLOG).set(count as f64);
                ::metrics::gauge!(metrics::OLDEST_SECONDS).set(oldest);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "sampling the result event backlog failed"),
            Err(_) => tracing::debug!("sampling the result event backlog timed out"),
        }
    }
}

/// Wait (at most [`CONFIRM_TIMEOUT`] in all) for the confirms of a step's
/// publishes: clears `ok[i]` for an event whose publish was nacked or never
/// confirmed, and sets `broken` when the channel failed. Returns how many
/// publishes the broker returned as unroutable.
async fn await_confirms(
    events: &[ResultEvent],
    confirms: Vec<(usize, Target, PublisherConfirm)>,
    ok: &mut [bool],
    broken: &mut Option<anyhow::Error>,
    deadline: Instant,
) -> usize {
    let mut unroutable = 0;
    for (i, target, confirm) in confirms {
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {}
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                unroutable += 1;
                ::metrics::counter!(metrics::UNROUTABLE, "target" => target.label()).increment(1);
                let ev = &events[i];
                // Nobody bound to the exchange is a deployment choice; a
                // requester's vanished reply queue is worth a warning.
                if target == Target::ReplyTo {
                    tracing::warn!(reply_to = ?ev.reply_to, reference_id = %ev.reference_id,
                            reply = %returned.reply_text, "result reply unroutable: the reply_to queue does not exist (not retried)");
                } else {
                    tracing::debug!(reference_id = %ev.reference_id, state = ev.state.as_str(),
                            reply = %returned.reply_text, "result event unroutable: no queue bound for it on the results exchange");
                }
            }
            Ok(Ok(Confirmation::Nack(_))) => ok[i] = false,
            Ok(Ok(Confirmation::NotRequested)) => {
                ok[i] = false;
                broken.get_or_insert_with(|| anyhow!("publisher confirms are off"));
            }
            Ok(Err(e)) => {
                ok[i] = false;
                broken
                    .get_or_insert_with(|| anyhow::Error::new(e).context("waiting for a confirm"));
            }
            Err(_) => {
                ok[i] = false;
                broken.get_or_insert_with(|| {
                    anyhow!("no publisher confirm within {CONFIRM_TIMEOUT:?}")
                });
            }
        }
    }
    unroutable
}

/// Declare the results exchange: topic, durable (idempotent).
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> anyhow::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "declaring the results exchange {exchange} (topic, durable): if it exists with \
                 another type, delete it or pick another IDEM_RESULTS_EXCHANGE"
            )
        })
}
