//! The metrics the result publisher records: their names, help texts, and
//! the counters registered at zero. Recorded through the `metrics` facade
//! (no-ops unless the process installed a recorder); the daemon installs one
//! and calls [`describe`].

use ::metrics::{counter, describe_counter, describe_gauge};
use idem_store::event::EventKind;

/// Counter, label `kind` ([`EventKind::as_str`]): result events confirmed by
/// the broker and deleted.
pub const PUBLISHED: &str = "idem_events_published_total";
/// Counter, label `target` ([`TARGETS`]): publishes the broker returned as
/// unroutable; not retried.
pub const UNROUTABLE: &str = "idem_events_unroutable_total";
/// Counter: result events not confirmed (nack, lost channel, no confirm in
/// time), backed off for a retry.
pub const FAILED: &str = "idem_events_failed_total";
/// Counter: broker sessions lost by the publisher, each followed by
/// reconnecting.
pub const RECONNECTS: &str = "idem_events_reconnects_total";
/// Gauge: result events waiting to be published (sampled by the publisher).
pub const BACKLOG: &str = "idem_events_backlog";
/// Gauge, seconds: age of the oldest result event waiting to be published
/// (sampled by the publisher).
pub const OLDEST_SECONDS: &str = "idem_events_oldest_seconds";

/// Every metric of this crate.
pub const ALL: &[&str] = &[
    PUBLISHED,
    UNROUTABLE,
    FAILED,
    RECONNECTS,
    BACKLOG,
    OLDEST_SECONDS,
];

/// Every value of the `target` label of [`UNROUTABLE`]: where a publish
/// went (the publisher's `Target::label`).
pub const TARGETS: [&str; 2] = ["exchange", "reply_to"];

/// Every kind of event, for the `kind` label of [`PUBLISHED`].
const KINDS: [EventKind; 3] = [EventKind::Settled, EventKind::Replayed, EventKind::Reply];

/// Help texts, and the counters registered at zero so that every series
/// exists (and `rate()` works) before its first event.
pub fn describe() {
    describe_counter!(
        PUBLISHED,
        "Result events confirmed by the broker and deleted, by kind (settled|replayed|reply)"
    );
    describe_counter!(
        UNROUTABLE,
        "Result event publishes the broker returned as unroutable, by target (exchange|reply_to); not retried"
    );
    describe_counter!(
        FAILED,
        "Result events not confirmed (nack, lost channel, no confirm in time), backed off for a retry"
    );
    describe_counter!(
        RECONNECTS,
        "Broker sessions lost by the result publisher, each followed by reconnecting"
    );
    describe_gauge!(
        BACKLOG,
        "Result events waiting to be published (sampled by the publisher)"
    );
    describe_gauge!(
        OLDEST_SECONDS,
        "Age of the oldest result event waiting to be published (sampled by the publisher)"
    );

    for kind in KINDS {
        counter!(PUBLISHED, "kind" => kind.as_str()).increment(0);
    }
    for target in TARGETS {
        counter!(UNROUTABLE, "target" => target).increment(0);
    }
    counter!(FAILED).increment(0);
    counter!(RECONNECTS).increment(0);
}
