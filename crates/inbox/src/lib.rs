//! # idem-inbox
//!
//! The AMQP side of idem: take deliveries, decide each one inside a PostgreSQL
//! transaction, commit, and only then ack.
//!
//! ## Layout
//! - `topology`: the durable queue and its dead-letter exchange and queue.
//! - `delivery`: read a lapin delivery into the message contract's raw parts,
//!   and its properties as JSON for quarantine.
//! - `batch`: record a batch of deliveries in one transaction, each behind its
//!   own savepoint so one bad message never poisons the others; the decisions.
//! - `consumer`: the loop — connect, declare, consume, batch, commit, ack —
//!   that reconnects by itself and stops on the shutdown token.

pub mod batch;
pub mod consumer;
pub mod delivery;
pub mod topology;

pub use batch::{Decision, record_batch};
pub use consumer::{InboxConfig, connect_amqp, run};
pub use topology::{Topology, declare};
