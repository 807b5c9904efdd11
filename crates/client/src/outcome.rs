//! The result event as a producer reads it (body version 1,
//! `docs/schema/result-event.v1.schema.json`): lenient about fields it does
//! not know (adding one is a compatible change), strict about the version.

use serde::Deserialize;
use uuid::Uuid;

/// The body version this crate reads.
pub const VERSION: u32 = 1;

/// How the charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Charged: `charge_id` and `result` say how.
    Succeeded,
    /// The provider declined it: `result` holds the decline.
    Declined,
    /// idem gave up (`error` says why); an operator may retry it.
    Dead,
}

/// Why this copy was sent (header `x-idem-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The charge became final.
    Settled,
    /// A duplicate of a final charge arrived: the stored result.
    Replayed,
    /// A duplicate arrived while the charge was open: its answer.
    Reply,
    /// No header, or one this crate does not know.
    Other,
}

impl Kind {
    pub(crate) fn of(header: Option<&str>) -> Self {
        match header {
            Some("settled") => Kind::Settled,
            Some("replayed") => Kind::Replayed,
            Some("reply") => Kind::Reply,
            _ => Kind::Other,
        }
    }
}

/// A charge's result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Outcome {
    /// Body version ([`VERSION`]).
    pub version: u32,
    /// The event's id, equal to its AMQP `message_id`: the same fact always
    /// has the same id, so deduplicate by it.
    pub event_id: Uuid,
    /// The charge's idempotency key at the provider.
    pub reference_id: Uuid,
    /// The request's scope.
    pub scope: String,
    /// The request's key.
    pub message_id: String,
    /// How it ended.
    pub state: State,
    /// The account.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// The provider's charge id (succeeded).
    pub charge_id: Option<String>,
    /// The provider's charge or decline.
    pub result: Option<serde_json::Value>,
    /// Why idem gave up (dead).
    pub error: Option<String>,
    /// When it became final (RFC 3339).
    pub settled_at: String,
    /// Why this copy was sent (not in the body: the header).
    #[serde(skip, default = "other")]
    pub kind: Kind,
}

fn other() -> Kind {
    Kind::Other
}

impl Outcome {
    /// Read a result event's body; `None` for another version or a body
    /// that is not one.
    pub(crate) fn parse(body: &[u8], kind: Kind) -> Result<Self, String> {
        let mut outcome: Outcome =
            serde_json::from_slice(body).map_err(|e| format!("not a result event: {e}"))?;
        if outcome.version != VERSION {
            return Err(format!(
                "result event version {} (this client reads {VERSION})",
                outcome.version
            ));
        }
        outcome.kind = kind;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_other_versions_refused() {
        let body = br#"{"version":1,"event_id":"396fc771-2ecf-5676-b4a7-60d068914056",
            "reference_id":"396fc771-2ecf-5676-b4a7-60d068914056","scope":"default",
            "message_id":"m-1","state":"declined","account_id":"a","amount":5,"currency":"EUR",
            "charge_id":null,"result":{"code":"card_declined"},"error":null,
            "settled_at":"2026-12-02T00:00:00Z","added_later":[1,2]}"#;
        let o = Outcome::parse(body, Kind::Settled).expect("a v1 event");
        assert_eq!(
            (o.state, o.kind, o.amount),
            (State::Declined, Kind::Settled, 5)
        );
        let v2 = String::from_utf8_lossy(body).replace("\"version\":1", "\"version\":2");
        assert!(Outcome::parse(v2.as_bytes(), Kind::Settled).is_err());
        assert!(Outcome::parse(b"[]", Kind::Other).is_err());
    }
}
