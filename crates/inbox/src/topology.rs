//! The broker objects idem owns: the work queue, and where messages go when
//! they cannot be recorded at all (dead letters).

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// The work queue's type (`IDEM_QUEUE_TYPE`). A queue's type cannot change
/// once declared (docs/upgrades.md says how to move a queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A classic queue: no delivery limit, so a message that kills every
    /// consumer it reaches is redelivered for ever (idem's own reader and the
    /// stack bound are what stop that). The default until quorum is.
    #[default]
    Classic,
    /// A quorum queue with `x-delivery-limit`: a message delivered that many
    /// times without an ack is dead-lettered, whatever stopped the consumers.
    Quorum {
        /// Deliveries before the broker dead-letters a message.
        delivery_limit: u32,
    },
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
    /// The work queue's type; the dead-letter queue is always classic.
    pub queue_type: QueueType,
}

impl Topology {
    /// The topology for `queue`.
    pub fn for_queue(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dead"),
            queue_type: QueueType::Classic,
        }
    }

    /// The same names with queues of `queue_type`.
    pub fn with_type(self, queue_type: QueueType) -> Self {
        Self { queue_type, ..self }
    }

    /// The work queue's type arguments, with its delivery limit.
    fn type_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let QueueType::Quorum { delivery_limit } = self.queue_type {
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongLongInt(i64::from(delivery_limit)),
            );
        }
        args
    }
}

/// Declare the topology (idempotent). A queue that already exists with other
/// arguments makes the broker close the channel: the error says so.
pub async fn declare(channel: &Channel, topology: &Topology) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
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
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            durable,
            // Classic whatever the work queue's type: a quorum queue may
            // carry a delivery limit of its own (RabbitMQ 4.x defaults to
            // 20), and a dead-letter queue has nowhere further to send what
            // it would drop; the drain requeues what it cannot store yet.
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring queue {}", topology.dead_letter_queue))?;
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
    let mut args = topology.type_arguments();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(topology.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(topology.queue.as_str().into()),
    );
    channel
        .queue_declare(topology.queue.as_str().into(), durable, args)
        .await
        .with_context(|| {
            format!(
                "declaring queue {} (if it exists with other arguments or another type, see docs/upgrades.md: \
                 delete it once empty, or pick another IDEM_QUEUE; IDEM_QUEUE_TYPE must match the queue's type)",
                topology.queue
            )
        })?;
    Ok(())
}
