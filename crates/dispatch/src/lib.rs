//! # idem-dispatch
//!
//! The outbox dispatcher: claim due rows with a lease, call the charge API
//! outside any transaction, record the result fenced by the lease.
//!
//! ## Layout
//! - `strategy`: what one attempt does for one claimed row — resolve an
//!   uncertain earlier attempt by lookup, charge under the reference id, and turn
//!   the answer into a [`idem_store::Settlement`] (with backoff and the attempt
//!   limit). Follows from the provider's capabilities.
//! - `dispatcher`: [`Dispatcher`]: `dispatch_once` (one claim, its attempts, their
//!   settlements — what tests drive step by step) and `run`, the bounded
//!   concurrent loop beside the lease rescuer, with graceful shutdown (its
//!   child module `run_loop`).
//! - `liveness`: the replica's liveness lock, a session advisory lock whose
//!   key claims store, released by PostgreSQL the moment the replica dies.
//! - `rescue`: the lease rescue (rows whose lease expired, or whose holder's
//!   liveness lock is gone, back in play), an `idem_periodic::Job` beside the
//!   dispatch loop: at once on start, then every 750 ms (jittered).
//! - `trace`: the attempt span's parent (the row's stored `traceparent`) and
//!   the child `traceparent` sent on the provider call.
//! - `breaker`: the provider-wide circuit breaker ([`Breaker`]): refusals
//!   (401/403/404, sustained 429 or refused connections) pause claiming;
//!   half-open probes, one row at a time after a jittered, capped backoff,
//!   close it. A pure state machine ([`breaker::Circuit`]) and its shared handle.
//! - `metrics`: the names and help texts of the metrics this crate records.
//! - `recorder`: group commit of results — one fenced statement for every
//!   result that queued up while the previous one was written, which with
//!   per-account ordering also leases each finished account's next row.

pub mod breaker;
pub mod dispatcher;
mod liveness;
pub mod metrics;
mod recorder;
mod rescue;
pub mod strategy;
mod trace;

pub use breaker::{Breaker, BreakerConfig};
pub use dispatcher::{DispatchConfig, Dispatched, Dispatcher};
pub use strategy::Backoff;
