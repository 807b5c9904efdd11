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
//! - `rejection`: why a message is refused ([`Rejection`], its stable codes)
//!   and the bounds of a key part.
//! - `identity`: the dedup key's derived values, [`fingerprint`] and
//!   [`reference_id`].
//! - `trace`: the W3C `traceparent` a message may carry: parsing, and the
//!   child header sent on the provider call ([`TraceParent`]).
//! - `tenancy`: who may write into which scope ([`ScopeAuth`], bound to the
//!   broker-validated `user_id`) and which `reply_to` queues a scope may
//!   name ([`ReplyToAllow`]).

pub mod envelope;
pub mod identity;
pub mod rejection;
pub mod tenancy;
pub mod trace;

#[cfg(test)]
mod proptests;

pub use envelope::{ChargeBody, ChargeRequest, Inbound};
pub use identity::{REFERENCE_NAMESPACE, fingerprint, reference_id};
pub use rejection::{DEFAULT_SCOPE, MAX_KEY_LEN, Rejection};
pub use tenancy::{AllowList, BadSetting, DEFAULT_REPLY_TO_ALLOW, ReplyToAllow, ScopeAuth};
pub use trace::TraceParent;
