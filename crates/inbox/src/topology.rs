//! The broker objects idem owns: the work queue, and where messages go when
//! they cannot be recorded at all (dead letters).

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ExchangeKind};

/// The delivery limit of a work queue declared without one being chosen
/// (`IDEM_DELIVERY_LIMIT`'s default).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// The dead-letter queue's own delivery limit when it is a quorum queue: in
/// effect none. The drain hands back what it cannot store yet (the database
/// away), and RabbitMQ 4 gives every quorum queue a limit of 20 unless told:
/// with nowhere further to go, a message past it would be dropped.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 2_000_000_000;

/// The work queue's type (`IDEM_QUEUE_TYPE`). A queue's type cannot change
/// once declared (docs/upgrades.md says how to move a queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue: no delivery limit, so a message that kills every
    /// consumer it reaches is redelivered for ever (idem's own reader and the
    /// stack bound are what stop that). On one node only: for development,
    /// or a queue declared before quorum was the default.
    Classic,
    /// A quorum queue (replicated over the cluster's nodes, Raft) with
    /// `x-delivery-limit`: a message delivered that many times without an ack
    /// is dead-lettered, whatever stopped the consumers.
    Quorum {
        /// Deliveries before the broker dead-letters a message.
        delivery_limit: u32,
    },
}

impl Default for QueueType {
    fn default() -> Self {
        Self::Quorum {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

/// Names of the queue and its dead-letter setup, derived from the queue name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The work queue, e.g. `idem.charges`.
    pub queue: String,
    /// The dead-letter exchange, `<queue>.dlx`.
    pub dead_letter_exchange: String,
    /// The dead-letter queue, `<queue>.dead`: messages rejected because even
    /// quarantine could not store them, or past the delivery limit. Nothing
    /// is lost: every replica drains it (`crate::drain`).
    pub dead_letter_queue: String,
    /// The queues' type: the work queue's (with its delivery limit), and the
    /// dead-letter queue's (quorum too, without a limit of its own).
    pub queue_type: QueueType,
    /// Whether a queue that already exists as classic is used as it is (with
    /// a warning) when quorum was not asked for explicitly: a deployment from
    /// before quorum was the default keeps working.
    pub keep_existing_classic: bool,
}

/// What [`declare`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// The work queue's type in effect.
    pub queue: QueueType,
    /// Whether the dead-letter queue is a quorum queue.
    pub dead_letter_quorum: bool,
}

impl Topology {
    /// The topology for `queue`: quorum queues, or classic ones where they
    /// already exist (the default of `IDEM_QUEUE_TYPE`).
    pub fn for_queue(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dead"),
            queue_type: QueueType::default(),
            keep_existing_classic: true,
        }
    }

    /// The same names with queues of `queue_type`, and only that type: a
    /// queue that exists as another type is an error.
    pub fn with_type(self, queue_type: QueueType) -> Self {
        Self {
            queue_type,
            keep_existing_classic: false,
            ..self
        }
    }

    /// The same names, quorum with `delivery_limit`, classic where a queue
    /// already is.
    pub fn quorum_unless_classic(self, delivery_limit: u32) -> Self {
        Self {
            queue_type: QueueType::Quorum { delivery_limit },
            keep_existing_classic: true,
            ..self
        }
    }

    /// The work queue's arguments: its type, its limit, where it dead-letters.
    fn queue_arguments(&self, queue_type: QueueType) -> FieldTable {
        let mut args = FieldTable::default();
        if let QueueType::Quorum { delivery_limit } = queue_type {
            quorum(&mut args, i64::from(delivery_limit));
        }
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(self.queue.as_str().into()),
        );
        args
    }
}

fn quorum(args: &mut FieldTable, delivery_limit: i64) {
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(delivery_limit),
    );
}

/// Declare the topology (idempotent), each declaration on a channel of its
/// own: a declaration the broker refuses closes its channel, and a queue that
/// exists as classic is found that way (`406 PRECONDITION_FAILED`,
/// inequivalent `x-queue-type`), then declared again as classic on a fresh
/// channel when [`Topology::keep_existing_classic`] says so. Any other
/// difference is an error that names docs/upgrades.md.
pub async fn declare(connection: &Connection, topology: &Topology) -> anyhow::Result<Declared> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .exchange_declare(
            topology.dead_letter_exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring exchange {}", topology.dead_letter_exchange))?;
    let _ = channel.close(200, "declared".into()).await;
    let want_quorum = topology.queue_type != QueueType::Classic;
    // The dead-letter queue was always classic before quorum was the
    // default, even beside a quorum work queue: one found classic is kept
    // whatever was asked (it holds only what waits for the drain).
    let dead_letter_queue = &topology.dead_letter_queue;
    let dead = declare_queue(connection, dead_letter_queue, want_quorum, true, |q| {
        let mut args = FieldTable::default();
        if q {
            quorum(&mut args, DEAD_LETTER_DELIVERY_LIMIT);
        }
        args
    })
    .await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            topology.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the dead-letter queue")?;
    let _ = channel.close(200, "declared".into()).await;
    let keep = topology.keep_existing_classic;
    let work = declare_queue(connection, &topology.queue, want_quorum, keep, |q| {
        topology.queue_arguments(if q {
            topology.queue_type
        } else {
            QueueType::Classic
        })
    })
    .await?;
    Ok(Declared {
        queue: if work {
            topology.queue_type
        } else {
            QueueType::Classic
        },
        dead_letter_quorum: dead,
    })
}

/// Declare `name` as quorum when `quorum` (arguments from `args`), falling
/// back to classic when it exists as one and `keep_classic`. `Ok(true)`: it
/// is a quorum queue.
async fn declare_queue(
    connection: &Connection,
    name: &str,
    quorum: bool,
    keep_classic: bool,
    args: impl Fn(bool) -> FieldTable,
) -> anyhow::Result<bool> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let hint = || {
        format!(
            "declaring queue {name} (if it exists with other arguments or another type, see \
             docs/upgrades.md: move it to a new queue, or set IDEM_QUEUE_TYPE to the queue's type)"
        )
    };
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let first = channel
        .queue_declare(name.into(), durable, args(quorum))
        .await;
    match first {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(quorum)
        }
        Err(e) if quorum && keep_classic && exists_as_classic(&e) => {
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            channel
                .queue_declare(name.into(), durable, args(false))
                .await
                .with_context(hint)?;
            let _ = channel.close(200, "declared".into()).await;
            tracing::warn!(
                queue = name,
                "queue exists as a classic queue: kept as it is (one node holds it, no delivery limit); \
                 docs/upgrades.md says how to move it to a quorum queue, IDEM_QUEUE_TYPE=classic silences this"
            );
            Ok(false)
        }
        Err(e) => Err(e).with_context(hint),
    }
}

/// Whether a refused declaration says the queue exists without
/// `x-queue-type: quorum` (a classic queue, declared with or without the
/// argument).
fn exists_as_classic(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return false;
    };
    let text = amqp.get_message().as_str();
    matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    ) && text.contains("'x-queue-type'")
        && (text.contains("current is none") || text.contains("'classic'"))
}
