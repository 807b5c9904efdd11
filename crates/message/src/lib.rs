//! # idem-message
//!
//! The inbound wire contract (`docs/contracts.md`, section "Inbound message"): what a producer
//! sends, how idem decides whether it is well formed, and the two values derived
//! from it that must never change between releases — the payload fingerprint and
//! the reference id.
//!
//! ## Layout
//! - `envelope`: the raw parts of a delivery and their validation into a
//!   [`ChargeRequest`] or a [`Rejection`].
//! - `identity`: the dedup key's derived values, [`fingerprint`] and
//!   [`reference_id`].
//! - `trace`: the W3C `traceparent` a message may carry: parsing, and the
//!   child header sent on the provider call ([`TraceParent`]).

pub mod envelope;
pub mod identity;
pub mod trace;

#[cfg(test)]
mod proptests;

pub use envelope::{ChargeBody, ChargeRequest, DEFAULT_SCOPE, Inbound, MAX_KEY_LEN, Rejection};
pub use identity::{REFERENCE_NAMESPACE, fingerprint, reference_id};
pub use trace::TraceParent;
