//! # idem-events
//!
//! Result events: when a charge settles (`succeeded`, `declined`, `dead`),
//! idem publishes its result to the `idem.results` topic exchange and, if the
//! request carried `reply_to`, to that queue with its `correlation_id`. A
//! duplicate request of a settled charge gets the stored result again.
//!
//! The events themselves are written by PostgreSQL in the transaction that
//! settles the row (a trigger, see `migrations/20261122000005_result_events.sql`)
//! or that records the duplicate (`idem_store::event::on_duplicate`): an outbox
//! of their own. This crate only sends them, at least once, with publisher
//! confirms, under a deterministic message_id for consumers to deduplicate.
//!
//! ## Layout
//! - `wire`: the versioned JSON body, the message id, routing key and properties.
//! - `metrics`: the names and help texts of the metrics the publisher records.
//! - `publisher`: claim → publish with confirms → delete or back off, in a loop
//!   that reconnects by itself (jittered backoff, `idem_periodic::Reconnect`);
//!   `publish_once` for tests.

pub mod metrics;
pub mod publisher;
pub mod wire;

pub use publisher::{Publisher, PublisherConfig, Step, StepError, declare_exchange};
pub use wire::{ResultBody, event_id, routing_key};
