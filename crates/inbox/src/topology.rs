//! The broker objects idem owns: the work queue, and where messages go when
//! they cannot be recorded at all (dead letters).

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// Names of the queue and its dead-letter setup, derived from the queue name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The work queue, e.g. `idem.charges`.
    pub queue: String,
    /// The dead-letter exchange, `<queue>.dlx`.
    pub dead_letter_exchange: String,
    /// The dead-letter queue, `<queue>.dead`: messages rejected because even
    /// quarantine could not store them. Nothing is lost: an operator drains it.
    pub dead_letter_queue: String,
}

impl Topology {
    /// The topology for `queue`.
    pub fn for_queue(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dead"),
        }
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
    let mut args = FieldTable::default();
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
                "declaring queue {} (if it exists with other arguments, delete it or pick another IDEM_QUEUE)",
                topology.queue
            )
        })?;
    Ok(())
}
