//! # idem-charge
//!
//! The external charge API as idem sees it.
//!
//! ## Layout
//! - `wire`: the JSON bodies and header names of DESIGN.md's charge API, shared
//!   with the provider simulator.
//! - `client`: the reqwest client; maps every HTTP answer or transport failure to
//!   an [`Attempt`] the dispatcher can act on, and knows the provider's
//!   [`Capabilities`].

pub mod client;
pub mod wire;

pub use client::{Attempt, Call, CallKind, Capabilities, ChargeClient, ClientError};
pub use wire::{Charge, ChargeList, ChargeMetadata, CreateCharge, Refund};
