//! # idem-charge-api
//!
//! The provider's wire contract (`docs/contracts.md`, section "Charge API"): the
//! JSON bodies and header names, and the record of one call. Plain data, no HTTP
//! client and no runtime: the client (`idem-charge`) and the provider simulator
//! (`idem-simulator`) both depend on it, and neither on the other, so the
//! fixtures in `src/golden/` are what holds them to the provider's contract.
//!
//! ## Layout
//! - `body`: the JSON bodies: [`CreateCharge`], [`Charge`], [`ChargeList`],
//!   [`Refund`], [`ErrorBody`].
//! - `header`: the header names the contract fixes ([`IDEMPOTENCY_KEY`],
//!   [`IDEMPOTENT_REPLAYED`], [`TRACEPARENT`]).
//! - `call`: [`Call`] and [`CallKind`], one provider call as the attempt
//!   history records it.
//! - `golden` (feature `golden`, and in this crate's tests): the hand-written
//!   JSON fixture of every body, and the value each one stands for.
//! - `golden_tests`: each fixture against its value, both ways, and the
//!   unknown-field tolerance of the bodies the client parses.

mod body;
mod call;
mod header;

#[cfg(any(test, feature = "golden"))]
pub mod golden;
#[cfg(test)]
mod golden_tests;

pub use body::{Charge, ChargeList, ChargeMetadata, CreateCharge, ErrorBody, ErrorDetail, Refund};
pub use call::{Call, CallKind};
pub use header::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, TRACEPARENT};
