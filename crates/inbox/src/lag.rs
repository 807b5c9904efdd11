//! Publish → recorded lag: how long a message waited between its producer
//! (or the broker) stamping it and the inbox transaction that decided it.
//!
//! The stamp is the header `timestamp_in_ms` when present (milliseconds;
//! RabbitMQ's incoming message interceptor `set_header_timestamp`, 3.12 and
//! later, writes it at the broker), else the AMQP `timestamp` property (seconds, usually set
//! by the producer). Both are producer input: a stamp that is missing, of a
//! type that is not an integer, more than [`FUTURE_TOLERANCE`] ahead of this
//! replica's clock (a skewed producer) or older than [`OLDEST`] (a zero or
//! garbage stamp) is not observed but counted as unusable, so the histogram
//! never carries a fifty-year wait and an operator can see how much of the
//! traffic it covers. A stamp slightly ahead counts as no wait.
//!
//! A seconds stamp truncates: its lag reads up to a second long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use crate::metrics;

/// The header a broker interceptor stamps in milliseconds.
pub const HEADER_MS: &str = "timestamp_in_ms";

/// How far ahead of this replica's clock a stamp may be and still count
/// (as no wait): clocks of producers and replicas differ a little.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(60);

/// The longest wait observed; an older stamp is taken as garbage.
pub const OLDEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a delivery's stamp says, read at `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stamp {
    /// It waited this long (seconds, never negative).
    Waited(f64),
    /// It carries no stamp.
    Missing,
    /// Its stamp cannot be a publish time (type, future, too old).
    Unusable,
}

/// The stamp of `properties`, read at `now`.
pub fn stamp(properties: &BasicProperties, now: SystemTime) -> Stamp {
    let header = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(HEADER_MS));
    let published_ms = match header {
        Some(value) => match integer(value) {
            Some(ms) => ms,
            None => return Stamp::Unusable,
        },
        None => match properties.timestamp() {
            Some(s) => i128::from(*s) * 1000,
            None => return Stamp::Missing,
        },
    };
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX));
    let waited_ms = now_ms - published_ms;
    if waited_ms < -(FUTURE_TOLERANCE.as_millis() as i128) || waited_ms > OLDEST.as_millis() as i128
    {
        return Stamp::Unusable;
    }
    Stamp::Waited(waited_ms.max(0) as f64 / 1000.0)
}

/// An integer header value, widened (no wrap on any width or sign).
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => i128::from(*v),
        AMQPValue::ShortShortUInt(v) => i128::from(*v),
        AMQPValue::ShortInt(v) => i128::from(*v),
        AMQPValue::ShortUInt(v) => i128::from(*v),
        AMQPValue::LongInt(v) => i128::from(*v),
        AMQPValue::LongUInt(v) => i128::from(*v),
        AMQPValue::LongLongInt(v) => i128::from(*v),
        AMQPValue::Timestamp(v) => i128::from(*v),
        _ => return None,
    })
}

/// Observe the lag of every delivery in a committed batch (now).
pub(crate) fn observe<'a>(batch: impl IntoIterator<Item = &'a BasicProperties>) {
    let now = SystemTime::now();
    for properties in batch {
        match stamp(properties, now) {
            Stamp::Waited(s) => ::metrics::histogram!(metrics::PUBLISH_LAG_SECONDS).record(s),
            Stamp::Missing => {}
            Stamp::Unusable => ::metrics::counter!(metrics::PUBLISH_STAMP_UNUSABLE).increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn with_header(value: AMQPValue) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(ShortString::from(HEADER_MS), value);
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn the_broker_header_wins_over_the_producer_property() {
        let now = at(1_800_000_000);
        let p = with_header(AMQPValue::LongLongInt(1_800_000_000_000 - 2_500))
            .with_timestamp(1_700_000_000);
        assert_eq!(stamp(&p, now), Stamp::Waited(2.5));
        let p = BasicProperties::default().with_timestamp(1_800_000_000 - 7);
        assert_eq!(stamp(&p, now), Stamp::Waited(7.0));
        assert_eq!(stamp(&BasicProperties::default(), now), Stamp::Missing);
    }

    #[test]
    fn hostile_stamps_are_unusable_never_a_wrap_or_a_panic() {
        let now = at(1_800_000_000);
        for p in [
            BasicProperties::default().with_timestamp(u64::MAX),
            BasicProperties::default().with_timestamp(0),
            BasicProperties::default().with_timestamp(1_800_000_000 + 3600),
            with_header(AMQPValue::LongLongInt(i64::MIN)),
            with_header(AMQPValue::LongLongInt(i64::MAX)),
            with_header(AMQPValue::Timestamp(u64::MAX)),
            with_header(AMQPValue::LongString("1800000000000".into())),
            with_header(AMQPValue::Double(1.8e12)),
        ] {
            assert_eq!(stamp(&p, now), Stamp::Unusable, "{p:?}");
        }
        // A little ahead (clock skew) is no wait, not a negative one.
        let ahead = BasicProperties::default().with_timestamp(1_800_000_000 + 5);
        assert_eq!(stamp(&ahead, now), Stamp::Waited(0.0));
        // A clock before 1970 reads as 0 and makes every stamp unusable.
        let p = BasicProperties::default().with_timestamp(1_800_000_000);
        assert_eq!(stamp(&p, UNIX_EPOCH), Stamp::Unusable);
    }
}
