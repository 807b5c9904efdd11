//! The metrics the consumer records: their names, help texts, and the
//! labelled counters registered at zero. Recorded through the `metrics`
//! facade (no-ops unless the process installed a recorder); the daemon
//! installs one and calls [`describe`].

use ::metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};

use crate::decision::Decision;

/// Counter, label `decision` (new, duplicate, conflict, quarantined or
/// unrecordable: one per kind of [`Decision`]): deliveries decided by
/// committed inbox transactions.
pub const MESSAGES: &str = "idem_inbox_messages_total";
/// Counter, label `reason` (the quarantine reason code): deliveries
/// quarantined as bad input.
pub const QUARANTINED: &str = "idem_inbox_quarantined_total";
/// Counter: committed charges and duplicates whose `reply_to` the
/// `IDEM_REPLY_TO_ALLOW` rules refused: charged, result on the results
/// exchange, no reply.
pub const REPLY_TO_REFUSED: &str = "idem_inbox_reply_to_refused_total";
/// Counter: inbox transactions committed, one per batch of deliveries.
pub const BATCHES: &str = "idem_inbox_batches_total";
/// Counter: inbox transactions that failed and were retried with the batch
/// held unacked, by `cause` (the kind of error; see `consumer::cause_label`).
pub const BATCH_RETRIES: &str = "idem_inbox_batch_retries_total";
/// Counter: batches whose set-based statements the database refused, decided
/// again message by message.
pub const BATCH_FALLBACKS: &str = "idem_inbox_batch_fallbacks_total";
/// Histogram, seconds: one committed inbox transaction, begin to commit.
pub const BATCH_SECONDS: &str = "idem_inbox_batch_seconds";
/// Counter: live broker sessions lost by the consumer, each followed by
/// reconnecting.
pub const RECONNECTS: &str = "idem_inbox_reconnects_total";
/// Gauge: 1 while the consumer has a live broker session, 0 while
/// (re)connecting. Absent in a replica that does not consume.
pub const BROKER_CONNECTED: &str = "idem_broker_connected";

/// Gauge: the prefetch count in force for the consumer (`basic.qos`), kept
/// by the byte budget `IDEM_PREFETCH_BYTES` within `1..=IDEM_PREFETCH`.
/// Absent in a replica that does not consume.
pub const PREFETCH: &str = "idem_inbox_prefetch";

/// Counter: messages idem's own reader took off a queue because lapin
/// refused a frame (`salvage`), by queue (`work`|`dead_letter`).
pub const SALVAGED: &str = "idem_inbox_salvaged_total";

/// Histogram, seconds: publish → recorded lag of each delivery a committed
/// inbox transaction decided, from its `timestamp_in_ms` header or AMQP
/// `timestamp` (`lag`); buckets [`LAG_BUCKETS`].
pub const PUBLISH_LAG_SECONDS: &str = "idem_inbox_publish_lag_seconds";
/// Counter: decided deliveries whose publish stamp cannot be one (not an
/// integer, far in the future, older than `lag::OLDEST`), not observed.
pub const PUBLISH_STAMP_UNUSABLE: &str = "idem_inbox_publish_stamp_unusable_total";

/// Buckets in seconds of [`PUBLISH_LAG_SECONDS`]: a queue's wait spans
/// milliseconds (a broker-stamped header) to an hour of backlog.
pub const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Every metric of this crate.
pub const ALL: &[&str] = &[
    MESSAGES,
    QUARANTINED,
    REPLY_TO_REFUSED,
    BATCHES,
    BATCH_RETRIES,
    BATCH_FALLBACKS,
    BATCH_SECONDS,
    RECONNECTS,
    BROKER_CONNECTED,
    PREFETCH,
    SALVAGED,
    PUBLISH_LAG_SECONDS,
    PUBLISH_STAMP_UNUSABLE,
];

/// The `decision` label of [`MESSAGES`] (and of the `message` span).
pub(crate) fn decision_label(decision: &Decision) -> &'static str {
    match decision {
        Decision::New { .. } => "new",
        Decision::Duplicate => "duplicate",
        Decision::Conflict => "conflict",
        Decision::Quarantined { .. } => "quarantined",
        Decision::Unrecordable { .. } => "unrecordable",
    }
}

/// Help texts, and the counters registered at zero so that every series
/// exists (and `rate()` works) before its first event. The quarantine
/// reasons are open-ended: those series appear with their first message.
pub fn describe() {
    describe_counter!(
        MESSAGES,
        "Deliveries decided by committed inbox transactions, by decision (new|duplicate|conflict|quarantined|unrecordable)"
    );
    describe_counter!(
        QUARANTINED,
        "Deliveries quarantined as bad input, by reason code"
    );
    describe_counter!(
        REPLY_TO_REFUSED,
        "Committed charges and duplicates whose reply_to IDEM_REPLY_TO_ALLOW refused (charged, result on the exchange, no reply)"
    );
    describe_counter!(
        BATCHES,
        "Inbox transactions committed (one per batch of deliveries)"
    );
    describe_counter!(
        BATCH_RETRIES,
        "Inbox transactions that failed and were retried with the batch held unacked, by cause (read_only, resources, shutdown, statement_timeout, lock_timeout, conflict, schema_or_privilege, connection, pool_timeout, data, other_server_error, other)"
    );
    describe_counter!(
        BATCH_FALLBACKS,
        "Inbox batches whose set-based statements the database refused, decided again message by message"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time of one committed inbox transaction, begin to commit"
    );
    describe_counter!(
        RECONNECTS,
        "Live broker sessions lost by the consumer, each followed by reconnecting"
    );
    describe_gauge!(
        BROKER_CONNECTED,
        "1 while the inbox consumer has a live broker session, 0 while (re)connecting"
    );
    describe_counter!(
        SALVAGED,
        "Messages idem's own AMQP reader took off a queue (lapin refused a frame, or the dead-letter queue was drained), by queue (work|dead_letter)"
    );
    describe_gauge!(
        PREFETCH,
        "Prefetch count in force for the inbox consumer, kept within IDEM_PREFETCH_BYTES by the bodies' sizes (1..=IDEM_PREFETCH)"
    );
    describe_histogram!(
        PUBLISH_LAG_SECONDS,
        Unit::Seconds,
        "Publish to recorded lag of each decided delivery, from its timestamp_in_ms header (broker-stamped, ms) or AMQP timestamp (seconds, truncated)"
    );
    describe_counter!(
        PUBLISH_STAMP_UNUSABLE,
        "Decided deliveries whose publish stamp cannot be one (not an integer, over a minute in the future, over 30 days old); not in the lag histogram"
    );

    // One of each kind of decision; the match in `decision_label` names them all.
    let decisions = [
        Decision::New { outbox_id: 0 },
        Decision::Duplicate,
        Decision::Conflict,
        Decision::Quarantined { code: "" },
        Decision::Unrecordable {
            error: String::new(),
        },
    ];
    for decision in &decisions {
        counter!(MESSAGES, "decision" => decision_label(decision)).increment(0);
    }
    for name in [
        REPLY_TO_REFUSED,
        BATCHES,
        BATCH_RETRIES,
        BATCH_FALLBACKS,
        RECONNECTS,
        PUBLISH_STAMP_UNUSABLE,
    ] {
        counter!(name).increment(0);
    }
    for queue in ["work", "dead_letter"] {
        counter!(SALVAGED, "queue" => queue).increment(0);
    }
}
