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

    /// Where the work queue dead-letters (its arguments but the type).
    fn dead_letter_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
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
    let dead = declare_queue(
        connection,
        Wanted {
            name: dead_letter_queue,
            base: FieldTable::default(),
            quorum: want_quorum.then_some(DEAD_LETTER_DELIVERY_LIMIT),
            kept: Some(
                "dead-letter queue exists as a classic queue beside a quorum work queue: kept as it \
                 is, but while its one node is down what the work queue dead-letters is dropped \
                 (RabbitMQ dead-letters at most once): docs/upgrades.md says how to move it",
            ),
        },
    )
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
    let limit = match topology.queue_type {
        QueueType::Quorum { delivery_limit } => Some(i64::from(delivery_limit)),
        QueueType::Classic => None,
    };
    let work = declare_queue(
        connection,
        Wanted {
            name: &topology.queue,
            base: topology.dead_letter_arguments(),
            quorum: limit,
            kept: topology.keep_existing_classic.then_some(
                "queue exists as a classic queue: kept as it is (one node holds it, no delivery \
                 limit); docs/upgrades.md says how to move it to a quorum queue, and \
                 IDEM_QUEUE_TYPE=classic silences this",
            ),
        },
    )
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

/// One queue to declare: its name, its arguments but the type, and the type
/// wanted.
struct Wanted<'a> {
    name: &'a str,
    /// Arguments other than `x-queue-type` and `x-delivery-limit`.
    base: FieldTable,
    /// `Some(delivery limit)`: quorum; `None`: classic.
    quorum: Option<i64>,
    /// What to log when the queue exists as classic and is kept (`None`:
    /// a classic queue found is an error).
    kept: Option<&'static str>,
}

/// Declare `wanted`: as quorum if asked, kept classic when it exists as one
/// and `wanted.kept` says so; classic with `x-queue-type: classic` named (a
/// broker whose default queue type is quorum, RabbitMQ 4's option, would
/// otherwise make a quorum queue without idem's arguments), and without it
/// for a queue an older release declared so. `Ok(true)`: a quorum queue.
async fn declare_queue(connection: &Connection, wanted: Wanted<'_>) -> anyhow::Result<bool> {
    let name = wanted.name;
    let hint = || {
        format!(
            "declaring queue {name} (if it exists with other arguments or another type, see \
             docs/upgrades.md: move it to a new queue, or set IDEM_QUEUE_TYPE to the queue's type)"
        )
    };
    if let Some(limit) = wanted.quorum {
        let mut args = wanted.base.clone();
        quorum(&mut args, limit);
        match try_declare(connection, name, args).await? {
            Ok(()) => return Ok(true),
            Err(e)
                if wanted.kept.is_some() && current_type(&e).is_some_and(Current::is_classic) =>
            {
                tracing::warn!(queue = name, "{}", wanted.kept.unwrap_or_default());
            }
            Err(e) => return Err(e).with_context(hint),
        }
    }
    let mut named = wanted.base.clone();
    named.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("classic".into()),
    );
    match try_declare(connection, name, named).await? {
        Ok(()) => Ok(false),
        Err(e) if current_type(&e) == Some(Current::Unnamed) => {
            try_declare(connection, name, wanted.base)
                .await?
                .with_context(hint)?;
            Ok(false)
        }
        Err(e) => Err(e).with_context(hint),
    }
}

/// One declaration on a channel of its own (a refusal closes it). The outer
/// error: no channel; the inner: the broker's refusal.
async fn try_declare(
    connection: &Connection,
    name: &str,
    args: FieldTable,
) -> anyhow::Result<Result<(), lapin::Error>> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel.queue_declare(name.into(), durable, args).await;
    if declared.is_ok() {
        let _ = channel.close(200, "declared".into()).await;
    }
    Ok(declared.map(|_| ()))
}

/// The existing queue's `x-queue-type`, as a refused declaration states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// Declared without the argument: classic (what older releases made).
    Unnamed,
    /// `classic`, named.
    Classic,
    /// Any other type.
    Other,
}

impl Current {
    fn is_classic(self) -> bool {
        matches!(self, Self::Unnamed | Self::Classic)
    }
}

/// What a `406 PRECONDITION_FAILED` about `x-queue-type` says the queue's
/// current type is: read after "but current is", so a queue or vhost named
/// `classic` cannot be mistaken for the type. `None`: another refusal.
fn current_type(error: &lapin::Error) -> Option<Current> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let precondition = matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    );
    let text = amqp.get_message().as_str();
    if !precondition || !text.contains("'x-queue-type'") {
        return None;
    }
    let (_, current) = text.rsplit_once("but current is ")?;
    Some(if current.starts_with("none") {
        Current::Unnamed
    } else if current.starts_with("the value 'classic'") {
        Current::Classic
    } else {
        Current::Other
    })
}
