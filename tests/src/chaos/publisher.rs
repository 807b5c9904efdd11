//! A producer that keeps publishing through broker restarts, as a real
//! at-least-once producer does: a window of messages is published with
//! confirms; if the connection dies before every confirm arrived, the whole
//! window is published again on a new connection. Those re-publishes are
//! duplicates the inbox must absorb, and they are counted.

use std::time::{Duration, Instant};

use anyhow::Context;
use idem_workload::{self as workload, Outgoing};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};

/// How long the producer keeps trying to reach the broker before failing.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// Longest wait for a window's confirms.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages per confirmed window.
const WINDOW: usize = 20;

/// A reconnecting, confirming producer to one queue.
pub struct Publisher {
    /// Broker URL.
    url: String,
    /// Target queue (declared with idem's topology on each connect).
    queue: String,
    /// The live session: connection and two confirm channels (two, so a pair
    /// can be published at the same moment).
    session: Option<(Connection, Channel, Channel)>,
    /// Deliveries published, re-publishes included.
    published: usize,
    /// Deliveries published again after a lost confirm.
    republished: usize,
}

impl Publisher {
    /// A producer for `queue` at `url`; connects on first use.
    pub fn new(url: &str, queue: &str) -> Self {
        Self {
            url: url.to_owned(),
            queue: queue.to_owned(),
            session: None,
            published: 0,
            republished: 0,
        }
    }

    /// Deliveries published so far, the producer's own retries included.
    pub fn published(&self) -> usize {
        self.published
    }

    /// Deliveries the producer published again because a confirm was lost.
    pub fn republished(&self) -> usize {
        self.republished
    }

    /// Publish `messages` at about `rate` per second (0: unlimited), each
    /// confirmed by the broker, surviving broker restarts.
    pub async fn publish(&mut self, messages: &[Outgoing], rate: u32) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut sent = 0usize;
        for window in messages.chunks(WINDOW) {
            self.confirmed(window, false).await?;
            sent += window.len();
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                tokio::time::sleep_until((started + due).into()).await;
            }
        }
        Ok(())
    }

    /// Publish each message twice at the same moment, on two channels, so
    /// two copies of one key race through the broker to the consumers.
    pub async fn publish_pairs(&mut self, pairs: &[Outgoing]) -> anyhow::Result<()> {
        for window in pairs.chunks(WINDOW / 2) {
            let doubled: Vec<Outgoing> =
                window.iter().flat_map(|m| [m.clone(), m.clone()]).collect();
            self.confirmed(&doubled, true).await?;
        }
        Ok(())
    }

    /// Publish `window` until the broker confirms all of it. With `split`,
    /// even- and odd-numbered messages go out concurrently on two channels.
    async fn confirmed(&mut self, window: &[Outgoing], split: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut attempt = 0;
        let queue = self.queue.clone();
        loop {
            let (_, first, second) = self.session().await?;
            let publishing = async {
                if split {
                    let evens: Vec<Outgoing> = window.iter().step_by(2).cloned().collect();
                    let odds: Vec<Outgoing> = window.iter().skip(1).step_by(2).cloned().collect();
                    let (a, b) = tokio::join!(
                        workload::publish(first, &queue, &evens, 0, |_| {}),
                        workload::publish(second, &queue, &odds, 0, |_| {}),
                    );
                    a.and(b)
                } else {
                    workload::publish(first, &queue, window, 0, |_| {}).await
                }
            };
            // A broker that neither confirms nor closes counts as lost too.
            let result = tokio::time::timeout(CONFIRM_TIMEOUT, publishing)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no confirm within {CONFIRM_TIMEOUT:?}")));
            self.published += window.len();
            if attempt > 0 {
                self.republished += window.len();
            }
            match result {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %format!("{e:#}"), "publisher: confirm lost; reconnecting and publishing the window again");
                    self.session = None;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("publisher gave up")),
            }
        }
    }

    /// The live session, connecting (and declaring idem's topology) if needed.
    async fn session(&mut self) -> anyhow::Result<&(Connection, Channel, Channel)> {
        let deadline = Instant::now() + GIVE_UP_AFTER;
        while self
            .session
            .as_ref()
            .is_none_or(|(c, ..)| !c.status().connected())
        {
            match connect(&self.url, &self.queue).await {
                Ok(session) => self.session = Some(session),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %format!("{e:#}"), "publisher: broker not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("publisher could not reach the broker")),
            }
        }
        self.session.as_ref().context("no session")
    }
}

async fn connect(url: &str, queue: &str) -> anyhow::Result<(Connection, Channel, Channel)> {
    let connection = idem_inbox::connect_amqp(url).await?;
    let first = connection.create_channel().await?;
    let second = connection.create_channel().await?;
    idem_inbox::declare(&connection, &idem_inbox::Topology::for_queue(queue)).await?;
    for channel in [&first, &second] {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    Ok((connection, first, second))
}
