//! What the batch works on and what it decides: one delivery as recording
//! sees it, and what happened to it. Shared by the two ways of recording a
//! batch (`batch`, message by message; `bulk`, set-based) and the consumer
//! that acks by the decisions.

use lapin::BasicProperties;

/// One delivery as the batch sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// AMQP properties and headers.
    pub properties: &'a BasicProperties,
    /// Raw body.
    pub body: &'a [u8],
    /// Whether the broker flagged it as redelivered.
    pub redelivered: bool,
}

/// What happened to one delivery. Every variant but `Unrecordable` is acked
/// after the commit; `Unrecordable` is rejected to the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// First of its key: inbox and outbox rows written.
    New {
        /// The outbox row to dispatch.
        outbox_id: i64,
    },
    /// Same key and payload as a recorded message: absorbed.
    Duplicate,
    /// Same key, other payload: recorded as a conflict, never charged.
    Conflict,
    /// Bad input, stored in quarantine with this reason code.
    Quarantined {
        /// Stable reason code.
        code: &'static str,
    },
    /// Even quarantine could not store it (the database refuses the row).
    Unrecordable {
        /// The database's error.
        error: String,
    },
}

impl Decision {
    /// Whether the delivery may be acked once the transaction has committed.
    pub fn ackable(&self) -> bool {
        !matches!(self, Decision::Unrecordable { .. })
    }
}
