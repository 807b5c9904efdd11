//! The messages lapin cannot hand over, taken off the head of a queue by
//! idem's own reader ([`crate::raw`]) and decided like any other.
//!
//! lapin refuses a content header whose short strings are not UTF-8 inside
//! its I/O loop and drops the connection; the broker then hands the same
//! message back first, to whichever consumer it picks, forever
//! (`docs/upstream/lapin-utf8-short-strings.md`). So when a consumer's
//! session ends with lapin's parse error, and periodically on the
//! dead-letter queue, [`take_head`] takes up to `most` messages with
//! `basic.get` on a connection of its own, in one transaction:
//!
//! - a message whose properties lapin would read (`convert::to_lapin`), with
//!   its body whole, goes through [`crate::record_batch`] like a delivery:
//!   charged once (the inbox deduplicates it), a duplicate, a conflict, or
//!   quarantined for its content;
//! - any other is quarantined with the header's raw bytes, what of its
//!   properties could be read, and a reason (`record`).
//!
//! Only after the commit are they acked, so a crash in between redelivers
//! them and the inbox absorbs the copies. A message even quarantine cannot
//! store is rejected to the dead-letter queue from the work queue, and left
//! in place on the dead-letter queue itself.

mod convert;
mod record;

use anyhow::Context;
use idem_store::quarantine::MAX_KEPT_BODY;
use sqlx::PgPool;

use crate::admission::Admission;
use crate::decision::{Decision, Incoming};
use crate::raw::{ConnectOptions, ParseError, RawDelivery, RawProperties};

pub use convert::{Unreadable, to_lapin};
pub use record::{CODE_HEADER_LIMITS, CODE_MALFORMED_HEADER, CODE_NOT_UTF8};

/// The largest frame salvage reads: 32 times RabbitMQ's default.
const SALVAGE_FRAME_MAX: u32 = 4 * 1024 * 1024;

/// Most messages one run takes: `wanted` (the refused message is among the
/// first `prefetch + 1`, the broker having requeued the session's unacked
/// ones), at most [`MOST`], and no more than `budget` bytes of bodies at the
/// reader's bound each (`IDEM_PREFETCH_BYTES`, the consumer's own budget).
pub fn most(wanted: usize, budget: u64, max_body: usize) -> usize {
    let per = body_limit(max_body) as u64;
    let affordable = usize::try_from(budget / per.max(1)).unwrap_or(usize::MAX);
    wanted.min(MOST).min(affordable).max(1)
}

/// Most messages any run takes (one transaction).
pub const MOST: usize = 1000;

/// Body bytes the reader keeps of one message: enough to decide a body
/// within the limit, and to keep what quarantine keeps of a longer one.
fn body_limit(max_body: usize) -> usize {
    max_body.saturating_add(1).max(MAX_KEPT_BODY)
}

/// Where the messages are taken from; decides what becomes of one that
/// cannot be stored at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The work queue: an unstorable message is rejected to the dead-letter queue.
    WorkQueue,
    /// The dead-letter queue: an unstorable message stays there (requeued).
    DeadLetters,
}

/// One run of [`take_head`].
#[derive(Debug, Clone)]
pub struct Salvage<'a> {
    /// Broker URL (`amqp://`; may hold a password: never log it).
    pub amqp_url: &'a str,
    /// The queue to take messages from.
    pub queue: &'a str,
    /// Most messages taken in this run.
    pub most: usize,
    /// The consumer's admission rules (body size limit, scope, reply_to):
    /// a salvaged message is decided like any delivery.
    pub admission: &'a Admission,
    /// Which queue it is.
    pub origin: Origin,
}

/// What one run did: one decision per message taken, in queue order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taken {
    /// The decisions, in the order the messages were taken.
    pub decisions: Vec<Decision>,
}

impl Taken {
    /// How many messages were quarantined.
    pub fn quarantined(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| matches!(d, Decision::Quarantined { .. }))
            .count()
    }
}

/// Take up to `s.most` messages off the head of `s.queue`, decide each in one
/// transaction, commit, then ack. An `Err` before the acks leaves every
/// message with the broker (it requeues them when the connection drops).
pub async fn take_head(pool: &PgPool, s: &Salvage<'_>) -> anyhow::Result<Taken> {
    let options = ConnectOptions {
        body_limit: body_limit(s.admission.max_body()),
        connection_name: format!("idem salvage ({})", s.queue),
        // RabbitMQ sends a content header whole, past the frame size this
        // reader negotiates: accept frames as large as a broker idem starts
        // against may offer (`crate::stack::check`), still bounded.
        frame_max: SALVAGE_FRAME_MAX,
        ..ConnectOptions::default()
    };
    let mut broker = crate::connect::connect_raw(s.amqp_url, options)
        .await
        .context("idem's own AMQP reader: connecting")?;
    let mut taken = Vec::new();
    while taken.len() < s.most {
        match broker.basic_get(s.queue).await.context("basic.get")? {
            Some(delivery) => taken.push(delivery),
            None => break,
        }
    }
    if taken.is_empty() {
        let _ = broker.close().await;
        return Ok(Taken::default());
    }
    let decisions = decide(pool, &taken, s.admission, s.origin).await?;
    for (delivery, decision) in taken.iter().zip(&decisions) {
        match (decision.ackable(), s.origin) {
            (true, _) => broker.ack(delivery.delivery_tag).await?,
            (false, Origin::WorkQueue) => broker.reject(delivery.delivery_tag, false).await?,
            (false, Origin::DeadLetters) => broker.reject(delivery.delivery_tag, true).await?,
        }
    }
    // A quorum queue settles acks asynchronously: closed at once, the
    // connection takes the tail of them along and the broker returns those
    // messages (seen on RabbitMQ 3.10.8: of 100 acked, 67 came back, also
    // with one `multiple` ack, also after a channel.close-ok). A basic.get is
    // a synchronous command to the queue that the broker handles after them:
    // once it answers, every ack before it stands. A message it happens to
    // take goes back untouched.
    if let Some(extra) = broker
        .basic_get(s.queue)
        .await
        .context("basic.get (ack barrier)")?
    {
        broker.reject(extra.delivery_tag, true).await?;
    }
    // The broker answers acks with nothing; a refused one closes the channel,
    // which close reports. Either way the commit stands and a redelivery is
    // absorbed by the inbox.
    broker
        .close()
        .await
        .context("closing idem's own AMQP reader after its acks")?;
    Ok(Taken { decisions })
}

/// What the raw path decides before the database: a message lapin would
/// have read, with its body whole, goes to the batch like any delivery; any
/// other is quarantined raw, with this code and reason. Pure: the fuzz
/// target `content_header` drives it with any bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Decide it through [`crate::record_batch`] with these properties
    /// (boxed: they are most of the enum's size).
    Batch(Box<lapin::BasicProperties>),
    /// Quarantine it raw.
    Raw {
        /// One of [`CODE_NOT_UTF8`], [`CODE_HEADER_LIMITS`],
        /// [`CODE_MALFORMED_HEADER`], or `too_large`.
        code: &'static str,
        /// In words, naming the field or the bound.
        reason: String,
    },
}

/// The [`Verdict`] for a content header's parse and a body of `body_size`
/// bytes of which the reader kept all (`whole`) or a prefix.
pub fn verdict(
    properties: &Result<RawProperties, ParseError>,
    whole: bool,
    body_size: u64,
) -> Verdict {
    let (code, reason) = match properties {
        Err(e) if e.limit().is_some() => (CODE_HEADER_LIMITS, format!("content header: {e}")),
        Err(e) => (CODE_MALFORMED_HEADER, format!("content header: {e}")),
        Ok(p) => match to_lapin(p) {
            Err(unreadable) => (CODE_NOT_UTF8, unreadable.to_string()),
            Ok(readable) if whole => return Verdict::Batch(Box::new(readable)),
            Ok(_) => (
                record::CODE_TOO_LARGE,
                format!("body is {body_size} bytes, over the limit"),
            ),
        },
    };
    Verdict::Raw { code, reason }
}

/// Decide every message in one transaction: those lapin would read through
/// the batch path, the rest quarantined raw.
async fn decide(
    pool: &PgPool,
    taken: &[RawDelivery],
    admission: &Admission,
    origin: Origin,
) -> anyhow::Result<Vec<Decision>> {
    let verdicts: Vec<Verdict> = taken
        .iter()
        .map(|d| verdict(&d.properties, !d.body_truncated(), d.body_size))
        .collect();
    let items: Vec<Incoming<'_>> = taken
        .iter()
        .zip(&verdicts)
        .filter_map(|(d, v)| match v {
            Verdict::Batch(properties) => Some(Incoming {
                properties,
                body: &d.body,
                redelivered: d.redelivered,
            }),
            Verdict::Raw { .. } => None,
        })
        .collect();
    let mut tx = pool.begin().await?;
    let batch = crate::record_batch(&mut tx, &items, admission).await?;
    let mut read = batch.iter().cloned();
    let mut decisions = Vec::with_capacity(taken.len());
    for (delivery, verdict) in taken.iter().zip(&verdicts) {
        let decision = match verdict {
            Verdict::Batch(_) => read
                .next()
                .context("the batch decided fewer messages than it got")?,
            Verdict::Raw { code, reason } => {
                record::quarantine_raw(&mut tx, delivery, origin, code, reason).await?
            }
        };
        decisions.push(decision);
    }
    tx.commit().await?;
    admission.report_refused_replies(&items, &batch);
    for decision in &decisions {
        ::metrics::counter!(crate::metrics::MESSAGES, "decision" => crate::metrics::decision_label(decision))
            .increment(1);
        if let Decision::Quarantined { code } = decision {
            ::metrics::counter!(crate::metrics::QUARANTINED, "reason" => *code).increment(1);
        }
    }
    Ok(decisions)
}
