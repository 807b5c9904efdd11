//! The result event on the wire: its body (versioned JSON), its deterministic
//! message id, routing key and AMQP properties.
//!
//! The body is a function of the settlement alone — the same bytes every time
//! the same settlement is sent (first publish, a retry after a lost confirm, a
//! replay for a duplicate request) — so a consumer that deduplicates by
//! `message_id` never drops something that differs. What differs per send
//! (`correlation_id`, why it was sent) travels in the properties.

use chrono::{DateTime, Utc};
use idem_message::REFERENCE_NAMESPACE;
use idem_store::OutboxState;
use idem_store::event::ResultEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body's `version`. Bump it for an incompatible change; adding a field is
/// compatible (consumers must ignore unknown fields).
pub const VERSION: u32 = 1;

/// The AMQP `type` property of every result event.
pub const MESSAGE_TYPE: &str = "idem.charge.result";

/// The header that says why this copy was sent (`settled`, `replayed`, `reply`).
pub const KIND_HEADER: &str = "x-idem-kind";

/// The deterministic message id of the result event of `reference_id` settling
/// as `state`: UUIDv5 in the project's namespace over
/// `result:<reference_id>:<state>` (a name no reference id's name can equal:
/// those start with a digit).
///
/// Why `(reference, state)` and nothing else: a consumer that deduplicates by
/// message_id must see each *fact* once. Every send of one settlement — a
/// retried publish, a replay to a duplicate request — is the same fact and
/// carries the same id, so a consumer that has it drops the copy (and one that
/// never saw it, such as a new reply queue, takes it). A row that changes final
/// state — `dead`, then re-queued by an operator and `succeeded` — is a new
/// fact with a new id, so the success is never dropped as a duplicate of the
/// death.
pub fn event_id(reference_id: Uuid, state: OutboxState) -> Uuid {
    let name = format!("result:{reference_id}:{}", state.as_str());
    Uuid::new_v5(&REFERENCE_NAMESPACE, name.as_bytes())
}

/// The routing key on the results exchange: `charge.<state>`, so consumers
/// bind `charge.*` for everything or `charge.succeeded` for one outcome.
pub fn routing_key(state: OutboxState) -> String {
    format!("charge.{}", state.as_str())
}

/// The JSON body of a result event (version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBody {
    /// Body format version ([`VERSION`]).
    pub version: u32,
    /// Equal to the AMQP `message_id`: see [`event_id`].
    pub event_id: Uuid,
    /// The charge's idempotency key, UUIDv5 over (scope, message_id).
    pub reference_id: Uuid,
    /// The request's scope (`app_id`, or `default`).
    pub scope: String,
    /// The request's key (its AMQP `message_id`).
    pub message_id: String,
    /// `succeeded`, `declined` or `dead`.
    pub state: OutboxState,
    /// The account charged.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// The provider's charge id (`succeeded` only).
    pub charge_id: Option<String>,
    /// The provider's charge (`succeeded`) or the decline, e.g.
    /// `{"status": "declined", "code": "card_declined"}` (`declined`).
    pub result: Option<serde_json::Value>,
    /// Why the charge was given up (`dead` only).
    pub error: Option<String>,
    /// When the charge settled.
    pub settled_at: DateTime<Utc>,
}

impl ResultBody {
    /// The body of `event`.
    pub fn of(event: &ResultEvent) -> Self {
        Self {
            version: VERSION,
            event_id: event_id(event.reference_id, event.state),
            reference_id: event.reference_id,
            scope: event.scope.clone(),
            message_id: event.message_id.clone(),
            state: event.state,
            account_id: event.account_id.clone(),
            amount: event.amount,
            currency: event.currency.clone(),
            charge_id: event.provider_charge_id.clone(),
            result: event.result.clone(),
            error: event.error.clone(),
            settled_at: event.settled_at,
        }
    }
}

/// The AMQP properties of `event`: persistent JSON, the deterministic
/// `message_id`, the request's `correlation_id`, its trace context, and the
/// kind of send in [`KIND_HEADER`].
pub fn properties(event: &ResultEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(KIND_HEADER),
        AMQPValue::LongString(event.kind.as_str().into()),
    );
    if let Some(trace) = &event.traceparent {
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(trace.as_str().into()),
        );
    }
    let id = event_id(event.reference_id, event.state).to_string();
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.as_str().into())
        .with_type(MESSAGE_TYPE.into())
        .with_app_id("idem".into())
        .with_timestamp(u64::try_from(event.settled_at.timestamp()).unwrap_or(0))
        .with_headers(headers);
    if let Some(correlation) = &event.correlation_id {
        props = props.with_correlation_id(correlation.as_str().into());
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_pinned_and_separates_states() {
        let reference = idem_message::reference_id("default", "m-1");
        // Pinned (checked independently with Python uuid.uuid5): consumers
        // deduplicate by it, so a release must not change it.
        assert_eq!(
            event_id(reference, OutboxState::Succeeded).to_string(),
            "396fc771-2ecf-5676-b4a7-60d068914056"
        );
        assert_eq!(
            event_id(reference, OutboxState::Dead).to_string(),
            "b9c30364-6e55-532d-a60e-92dd9a511f26"
        );
        assert_eq!(event_id(reference, OutboxState::Dead).get_version_num(), 5);
        assert_ne!(
            event_id(reference, OutboxState::Succeeded),
            event_id(
                idem_message::reference_id("default", "m-2"),
                OutboxState::Succeeded
            )
        );
    }

    #[test]
    fn routing_keys_name_the_state() {
        assert_eq!(routing_key(OutboxState::Declined), "charge.declined");
    }
}
