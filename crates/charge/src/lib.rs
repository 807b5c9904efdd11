//! # idem-charge
//!
//! The external charge API as idem sees it: the HTTP client, and what each
//! answer means for money. The wire contract itself (bodies, header names, the
//! record of a call) is `idem-charge-api`'s, re-exported here so callers need
//! one import.
//!
//! ## Layout
//! - `client`: the reqwest client; maps every HTTP answer or transport failure to
//!   an [`Attempt`] the dispatcher can act on, and knows the provider's
//!   [`Capabilities`].
//! - `hygiene`: what the provider sends, bounded and cleaned before it is
//!   stored, logged or published; ids percent-encoded into paths.
//! - `refusal`: [`Refusal`], the answers about us rather than the charge
//!   (credentials, endpoint, rate, connection refused).
//! - `wire_tests` (tests only): the client sends the golden `CreateCharge` body
//!   and headers, checked on a captured request.

pub mod client;
pub mod hygiene;
pub mod refusal;
#[cfg(test)]
mod wire_tests;

pub use client::{Attempt, Capabilities, ChargeClient, ClientError};
pub use idem_charge_api::{
    Call, CallKind, Charge, ChargeList, ChargeMetadata, CreateCharge, ErrorBody, ErrorDetail,
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, Refund, TRACEPARENT,
};
pub use refusal::Refusal;
