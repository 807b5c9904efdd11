//! The work queue's type and what guards it against a message no consumer
//! can settle: the delivery limit of a quorum queue, and how often every
//! consuming replica drains the dead-letter queue (`idem_inbox::drain`).

use std::time::Duration;

use anyhow::ensure;
use clap::{Args, ValueEnum};
use idem_inbox::{QueueType, Topology};

/// Which kind of queue idem declares.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A classic queue (single-node development; no delivery limit).
    Classic,
    /// A quorum queue with `x-delivery-limit` (`IDEM_DELIVERY_LIMIT`).
    Quorum,
}

/// The queue settings of `idem run`.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Type of the work queue and its dead-letter queue. Unset: quorum, but a
    /// queue that already exists as classic is used as it is, with a warning
    /// (a deployment from before quorum was the default). Set: that type
    /// only. A queue's type cannot change once declared: docs/upgrades.md
    /// says how to move one.
    #[arg(long, env = "IDEM_QUEUE_TYPE", value_enum)]
    pub queue_type: Option<QueueKind>,
    /// Quorum queues: deliveries of one message without an ack before the
    /// broker dead-letters it (a message that keeps killing its consumers).
    #[arg(long, env = "IDEM_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Seconds between two drains of the dead-letter queue `<queue>.dead`
    /// (every consuming replica; each message goes to one of them).
    #[arg(long, env = "IDEM_DEAD_LETTER_DRAIN_SECS", default_value_t = 30)]
    pub dead_letter_drain_secs: u64,
}

/// The validated queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// The work queue's type, with its delivery limit.
    pub queue_type: QueueType,
    /// Whether an existing classic queue is kept (the type was not chosen).
    pub keep_existing_classic: bool,
    /// The dead-letter drain's period.
    pub drain_every: Duration,
}

impl QueueSettings {
    /// The topology of `queue` with these settings: what `idem run` declares.
    pub fn topology(&self, queue: &str) -> Topology {
        Topology {
            keep_existing_classic: self.keep_existing_classic,
            ..Topology::for_queue(queue).with_type(self.queue_type)
        }
    }
}

impl QueueArgs {
    /// Errors name the variable and the accepted range.
    pub fn validate(&self) -> anyhow::Result<QueueSettings> {
        ensure!(
            (1..=1000).contains(&self.delivery_limit),
            "IDEM_DELIVERY_LIMIT={} must be 1..=1000: a few deliveries tell a poison message from a \
             crash, and each one re-runs the message",
            self.delivery_limit
        );
        ensure!(
            (1..=3600).contains(&self.dead_letter_drain_secs),
            "IDEM_DEAD_LETTER_DRAIN_SECS={} must be 1..=3600: the dead-letter queue is always read, \
             and a message found there waits at most this long for its decision",
            self.dead_letter_drain_secs
        );
        let quorum = QueueType::Quorum {
            delivery_limit: self.delivery_limit,
        };
        let queue_type = match self.queue_type {
            Some(QueueKind::Classic) => QueueType::Classic,
            Some(QueueKind::Quorum) | None => quorum,
        };
        Ok(QueueSettings {
            queue_type,
            keep_existing_classic: self.queue_type.is_none(),
            drain_every: Duration::from_secs(self.dead_letter_drain_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: impl Into<Option<QueueKind>>, limit: u32, drain: u64) -> QueueArgs {
        QueueArgs {
            queue_type: kind.into(),
            delivery_limit: limit,
            dead_letter_drain_secs: drain,
        }
    }

    #[test]
    fn quorum_carries_its_limit_and_bad_values_name_their_variable() {
        let ok = args(QueueKind::Quorum, 3, 10).validate().expect("valid");
        assert_eq!(ok.queue_type, QueueType::Quorum { delivery_limit: 3 });
        assert!(!ok.keep_existing_classic, "quorum asked for: quorum only");
        let unset = args(None, 4, 10).validate().expect("valid");
        assert_eq!(unset.queue_type, QueueType::Quorum { delivery_limit: 4 });
        assert!(
            unset.keep_existing_classic,
            "unset: an existing classic queue is kept"
        );
        assert_eq!(ok.drain_every, Duration::from_secs(10));
        let classic = args(QueueKind::Classic, 5, 30).validate().expect("valid");
        assert_eq!(classic.queue_type, QueueType::Classic);
        assert!(!classic.keep_existing_classic);
        let err = args(QueueKind::Quorum, 0, 10)
            .validate()
            .expect_err("limit 0");
        assert!(err.to_string().contains("IDEM_DELIVERY_LIMIT=0"), "{err}");
        let err = args(QueueKind::Classic, 5, 0)
            .validate()
            .expect_err("drain 0");
        assert!(
            err.to_string().contains("IDEM_DEAD_LETTER_DRAIN_SECS=0"),
            "{err}"
        );
    }
}
